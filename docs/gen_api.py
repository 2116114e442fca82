"""Writes docs/api.md, the API reference, from the installed package itself:
every public module, class, function and method with its signature and
docstring (inspect), so the reference cannot drift from the code.

    python docs/gen_api.py            # rewrites docs/api.md
    python docs/gen_api.py --check    # exit 1 when docs/api.md is not what the code gives
"""
import argparse
import importlib
import inspect
import pathlib
import sys

MODULES = ["nerve", "nerve.layers", "nerve.activations", "nerve.losses", "nerve.metrics", "nerve.optimizers",
           "nerve.schedules", "nerve.initializers", "nerve.regularizers", "nerve.constraints", "nerve.callbacks",
           "nerve.augment", "nerve.datasets", "nerve.pruning", "nerve.diagnostics", "nerve.surfaces",
           "nerve.onnx", "nerve.interop", "nerve.safetensors", "nerve.sklearn", "nerve.distributed"]
OUT = pathlib.Path(__file__).resolve().parent / "api.md"


def _sig(obj):
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def _doc(obj):
    doc = inspect.getdoc(obj) or ""
    return doc.strip()


def _public(mod):
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [n for n, v in vars(mod).items() if not n.startswith("_")
                 and (inspect.isclass(v) or inspect.isfunction(v))
                 and getattr(v, "__module__", "") == mod.__name__]
    return [n for n in names if not inspect.ismodule(getattr(mod, n, None))]


def _methods(cls):
    out, seen = [], set()
    # Own and inherited members, from nerve's classes only (not object's or scikit-learn's).
    members = [(n, m) for k in cls.__mro__ if k.__module__.startswith("nerve") for n, m in vars(k).items()]
    for name, member in members:
        if name in seen or (name.startswith("_") and name != "__call__"):
            continue
        seen.add(name)
        if inspect.isfunction(member):
            out.append((name, _sig(member), _doc(member)))
        elif isinstance(member, property):
            out.append((name, None, _doc(member)))
    return out


def render():
    lines = ["# API reference", "",
             "Generated from the code by `python docs/gen_api.py` (signatures and docstrings as the package "
             "has them). Guides: [training and callbacks](training.md), [saving and loading](saving.md), "
             "[the command line](cli.md), [scikit-learn estimators](sklearn.md), "
             "[optimizers](optimizers.md), [activations](activations.md), [interop](interop.md).", ""]
    for modname in MODULES:
        try:
            mod = importlib.import_module(modname)
        except ImportError as e:  # an optional extra that is not installed
            lines += [f"## `{modname}`", "", f"*(not importable here: {e}; needs its extra)*", ""]
            continue
        lines += [f"## `{modname}`", ""]
        if _doc(mod):
            lines += [_doc(mod), ""]
        for name in _public(mod):
            obj = getattr(mod, name, None)
            if obj is None:
                continue
            qual = f"{modname}.{name}" if modname != "nerve" else f"nv.{name}"
            if inspect.isclass(obj):
                lines += [f"### class `{qual}{_sig(obj)}`", ""]
                if _doc(obj):
                    lines += [_doc(obj), ""]
                for mname, sig, doc in _methods(obj):
                    head = f"- `{mname}{sig}`" if sig is not None else f"- `{mname}` (property)"
                    first = doc.split("\n\n")[0].replace("\n", " ") if doc else ""
                    lines.append(f"{head}{': ' + first if first else ''}")
                lines.append("")
            elif callable(obj):
                lines += [f"### `{qual}{_sig(obj)}`", ""]
                if _doc(obj):
                    lines += [_doc(obj), ""]
            else:
                lines += [f"### `{qual}` = `{obj!r}`"[:200], ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description="write docs/api.md from the package")
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        same = OUT.exists() and OUT.read_text() == text
        print("docs/api.md is up to date" if same else "docs/api.md differs from the code: run python docs/gen_api.py")
        return 0 if same else 1
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
