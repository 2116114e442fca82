# pip builds every `pip install .` in a fresh isolated environment, so the
# headers of the build requirements (pybind11, Eigen from cmeel-eigen) sit in
# a new temporary folder each time. Compile commands naming that folder differ
# on every install, and ninja recompiles everything even though
# scikit-build-core reuses build-dir: the README's two set-up commands
# compiled the core twice. Copies under the build folder, rewritten only when
# a header's content changes (configure_file COPYONLY), keep the compile
# commands and the header timestamps the same, so the second install
# reconfigures and relinks nothing that did not change.
function(nerve_stable_includes target subdir)
  if(NOT TARGET ${target})
    return()
  endif()
  get_target_property(_aliased ${target} ALIASED_TARGET)
  if(_aliased)
    set(target ${_aliased})
  endif()
  get_target_property(_dirs ${target} INTERFACE_INCLUDE_DIRECTORIES)
  if(NOT _dirs)
    return()
  endif()
  set(_stable "")
  set(_index 0)
  foreach(_dir IN LISTS _dirs)
    if(_dir MATCHES "^\\$<" OR NOT IS_DIRECTORY "${_dir}")
      list(APPEND _stable "${_dir}")  # generator expressions and missing folders as they are
      continue()
    endif()
    set(_dest "${CMAKE_BINARY_DIR}/stable-include/${subdir}/${_index}")
    math(EXPR _index "${_index} + 1")
    file(GLOB_RECURSE _files RELATIVE "${_dir}" "${_dir}/*")
    foreach(_f IN LISTS _files)
      configure_file("${_dir}/${_f}" "${_dest}/${_f}" COPYONLY)
    endforeach()
    list(APPEND _stable "${_dest}")
  endforeach()
  set_target_properties(${target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_stable}")
endfunction()
