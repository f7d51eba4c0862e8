// The separately compiled part of collie: build this file once, with COLLIE_SEPARATE_COMPILATION
// defined for it and for every translation unit that includes a collie header, and link it in.
#include <collie/src.hpp>
