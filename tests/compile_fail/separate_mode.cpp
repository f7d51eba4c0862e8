// With COLLIE_SEPARATE_COMPILATION, what a translation unit must include beyond
// <collie/collie.hpp> is said by the compiler, not left to the linker (compile_fail_test.sh):
// a reduction with an op of one's own through a Group needs the kernels (collie/core/reduce.hpp);
// making a Group from a typed collective needs the list of pairs (collie/runtime/enabled.hpp);
// and a backend switch for a transport this version lacks stops the build. Without a case
// macro, the same file, with those headers, compiles.
#include "collie/collie.hpp"

#include <vector>

#if !defined(COLLIE_CASE_CUSTOM_OP_WITHOUT_KERNELS)
#include "collie/core/reduce.hpp"
// The typed path includes the kernels itself, so the first case leaves it out.
#if !defined(COLLIE_CASE_GROUP_WITHOUT_PAIRS)
#include "collie/runtime/enabled.hpp"
#endif
#include "collie/algorithm/mesh.hpp"
#include "collie/core/collective.hpp"
#include "collie/transport/inprocess.hpp"
#endif

struct Larger {
  float operator()(float a, float b) const { return a > b ? a : b; }
};

int main() {
  collie::Group world = collie::init();
  std::vector<float> x(4, 1.0f);
  world.all_reduce(x, Larger{});
#if !defined(COLLIE_CASE_CUSTOM_OP_WITHOUT_KERNELS)
  collie::InProcessWorld threads(1);
  collie::Group mine(collie::Collective<collie::InProcessTransport, collie::Mesh>(threads.transport(0)),
                     "mine");
  mine.all_sum(x);
#endif
}
