# find_package(jitmem) from a jitmem source tree: set jitmem_DIR to this directory.
if(NOT TARGET jitmem::jitmem)
  add_subdirectory("${CMAKE_CURRENT_LIST_DIR}/.." "${CMAKE_BINARY_DIR}/_jitmem")
endif()
set(jitmem_FOUND TRUE)
