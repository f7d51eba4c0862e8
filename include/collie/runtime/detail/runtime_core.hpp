// The runtime core under collie::Group (runtime/group.hpp): a handle on one of the enabled pairs,
// with one std::visit per byte-level operation. Declared here without the pairs, so that a
// program's translation units need not see any transport; the variant over the pairs is in
// runtime_variant.hpp and the operations in runtime/impl/runtime_core.ipp.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <utility>
#include <variant>

#include "collie/config.hpp"
#include "collie/core/basic_collective.hpp"
#include "collie/core/call.hpp"
#include "collie/core/options.hpp"
#include "collie/core/request.hpp"

namespace collie::detail {

// The core of a Group: a `std::variant` over every enabled `Collective<T, A>`, shared by the
// copies of the Group. Each byte-level operation is one `std::visit` into the typed collective's
// own core: the element type and the op are already erased, so the visit costs the same for
// every type, and no operation makes a virtual call or allocates.
//
// The variant lives behind `Impl` (runtime_variant.hpp), which only the translation units that
// make or unwrap a group from a typed collective need: `init()`, `split` and `run_as_threads`
// in collie's own code, and a program's `Group(Collective<T, A>{...}, name)` or
// `get_if<Collective<T, A>>()` (which include <collie/runtime/enabled.hpp>, the list of pairs).
class RuntimeCore {
 public:
  using Bytes = std::span<const std::byte>;
  using MutableBytes = std::span<std::byte>;
  struct Impl;

  // Wraps one of the enabled collectives. `I` delays the use of Impl to where this is
  // instantiated (the end of the translation unit), by which runtime_variant.hpp must have been
  // seen.
  template <class C, class I = Impl>
  RuntimeCore(C collective, std::string backend)
      : impl_(make_impl<I>(std::move(collective), std::move(backend))) {}

  COLLIE_DECL int rank() const noexcept;
  COLLIE_DECL int size() const noexcept;
  COLLIE_DECL const std::string& name() const noexcept;
  COLLIE_DECL const std::string& backend() const noexcept;
  COLLIE_DECL const Options& options() const noexcept;
  COLLIE_DECL FuseSpace& fuse_space() noexcept;

  // The typed collective, if it is a C.
  template <class C, class I = Impl>
  C* get_if() noexcept {
    static_assert(requires { sizeof(I); }, "collie: Group::get_if needs "
                                           "<collie/runtime/enabled.hpp>, the pairs a Group holds");
    return std::get_if<C>(&static_cast<I&>(*impl_).collective);
  }

  COLLIE_DECL std::error_code all_reduce(Bytes in, MutableBytes out, const Reduction& r) noexcept;
  COLLIE_DECL std::error_code reduce_scatter(Bytes in, MutableBytes out,
                                             const Reduction& r) noexcept;
  COLLIE_DECL std::error_code all_gather(Bytes in, MutableBytes out) noexcept;
  COLLIE_DECL std::error_code broadcast(MutableBytes data, int root) noexcept;
  COLLIE_DECL std::error_code all_to_all(Bytes in, MutableBytes out) noexcept;
  COLLIE_DECL std::error_code barrier() noexcept;
  COLLIE_DECL std::error_code send(Bytes data, int dst) noexcept;
  COLLIE_DECL std::error_code recv(MutableBytes data, int src) noexcept;

  COLLIE_DECL Request all_reduce_async(Bytes in, MutableBytes out, const Reduction& r,
                                       std::shared_ptr<const void> keep);
  COLLIE_DECL Request reduce_scatter_async(Bytes in, MutableBytes out, const Reduction& r,
                                           std::shared_ptr<const void> keep);
  COLLIE_DECL Request all_gather_async(Bytes in, MutableBytes out);
  COLLIE_DECL Request broadcast_async(MutableBytes data, int root);
  COLLIE_DECL Request all_to_all_async(Bytes in, MutableBytes out);
  COLLIE_DECL Request barrier_async();
  COLLIE_DECL Request send_async(Bytes data, int dst);
  COLLIE_DECL Request recv_async(MutableBytes data, int src);

  COLLIE_DECL std::optional<RuntimeCore> split(int color, int key, std::error_code& ec) noexcept;

 private:
  template <class I, class C>
  static std::shared_ptr<Impl> make_impl(C&& collective, std::string backend) {
    static_assert(requires { sizeof(I); },
                  "collie: making a Group from a typed Collective needs "
                  "<collie/runtime/enabled.hpp>, the pairs a Group can hold");
    return std::make_shared<I>(std::forward<C>(collective), std::move(backend));
  }

  std::shared_ptr<Impl> impl_;
};

}  // namespace collie::detail
