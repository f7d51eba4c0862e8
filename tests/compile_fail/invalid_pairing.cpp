// Must NOT compile, in each of its cases, and the compiler must say why (compile_fail_test.sh):
// an algorithm that needs native collectives paired with the in-process transport, which has
// none; something that is no transport; a buffer of a type collie does not move; a temporary
// container given to an asynchronous call, which would be gone before the call runs.
#include "collie/collie.hpp"

#include <vector>

// Stands for Native (MPI/NCCL forwarding): its all_reduce exists only over transports with
// native collectives.
struct NeedsNative {
  using algorithm_concept = collie::algorithm_t;
  static constexpr std::string_view name = "needs-native";
  friend bool operator==(const NeedsNative&, const NeedsNative&) = default;
  template <collie::NativeCollectiveTransport T>
  std::error_code all_reduce(T&, collie::Call&, std::span<std::byte>,
                             const collie::Reduction&) const {
    return {};
  }
};

int main() {
  collie::InProcessWorld world(1);
#if defined(COLLIE_CASE_NOT_A_TRANSPORT)
  collie::Collective<int, collie::Ring> c{0};
#elif defined(COLLIE_CASE_NOT_AN_ELEMENT)
  collie::Group c = collie::init();
  std::vector<char> text(3);
  c.all_sum(text);
#elif defined(COLLIE_CASE_TEMPORARY_ASYNC)
  collie::Group c = collie::init();
  auto pending = c.all_sum_async(std::vector<float>(3));
#else
  collie::Collective<collie::InProcessTransport, NeedsNative> c{world.transport(0)};
#endif
  (void)c;
}
