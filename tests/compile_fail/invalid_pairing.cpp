// Must NOT compile: the in-process transport has no native collectives, so an algorithm that
// needs them cannot be paired with it. compile_fail_test.sh checks the compiler says why.
#include "collie/collie.hpp"

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
#else
  collie::Collective<collie::InProcessTransport, NeedsNative> c{world.transport(0)};
#endif
  (void)c;
}
