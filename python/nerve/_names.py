"""Name lookup with "did you mean" suggestions, shared by every registry."""
import difflib


def resolve(kind, name, names):
    """Returns `name` normalised if it is one of `names`, else raises ValueError
    listing the closest matches (or all names when none is close)."""
    if not isinstance(name, str):
        raise TypeError(f"{kind} name must be a string, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    if key in names:
        return key
    close = difflib.get_close_matches(key, list(names), n=3, cutoff=0.5)
    hint = f" — did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown {kind} {name!r}{hint} (known: {', '.join(sorted(names))})")


def check_params(kind, name, given, allowed):
    """Raises ValueError for keyword parameters `name` does not take."""
    unknown = [k for k in given if k not in allowed]
    if unknown:
        bad = unknown[0]
        close = difflib.get_close_matches(bad, list(allowed), n=1)
        hint = f" — did you mean {close[0]!r}?" if close else ""
        takes = ", ".join(allowed) if allowed else "no parameters"
        raise ValueError(f"{kind} {name!r} got an unknown parameter {bad!r}{hint} (it takes: {takes})")
