// Removes the Metal keyword macros of metal_shim.h once the kernel sources are included, so that the
// rest of a translation unit is plain C++ again.
#undef kernel
#undef device
#undef constant
#undef thread_position_in_grid
#undef thread_index_in_simdgroup
