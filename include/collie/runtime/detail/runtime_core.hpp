// The runtime core under collie::Group (runtime/group.hpp): a variant over every enabled pair and
// one std::visit per byte-level operation.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

#include "collie/core/basic_collective.hpp"
#include "collie/core/collective.hpp"
#include "collie/core/request.hpp"
#include "collie/runtime/enabled.hpp"

namespace collie {

namespace detail {

// The core of a Group: a `std::variant` over every enabled `Collective<T, A>`, shared by the
// copies of the Group. Each byte-level operation is one `std::visit` into the typed collective's
// own core: the element type and the op are already erased, so the visit costs the same for
// every type, and no operation makes a virtual call or allocates.
class RuntimeCore {
 public:
  using Variant = typename VariantOf<EnabledCollectives>::type;
  using Bytes = std::span<const std::byte>;
  using MutableBytes = std::span<std::byte>;

 private:
  struct Impl {
    template <class C>
    Impl(C&& c, std::string b)
        : collective(std::forward<C>(c)), backend(std::move(b)),
          rank(std::get<std::decay_t<C>>(collective).rank()),
          size(std::get<std::decay_t<C>>(collective).size()),
          name(std::get<std::decay_t<C>>(collective).name()) {}
    Variant collective;
    std::string backend;
    int rank;
    int size;
    std::string name;
    FuseSpace fuse;
  };

  // The variant is never valueless (nothing replaces its value), so the visit cannot throw.
  template <class F>
  decltype(auto) visit(F&& f) const noexcept {
    return std::visit(std::forward<F>(f), impl_->collective);
  }

 public:

  template <class C>
    requires std::is_constructible_v<Variant, C&&>
  RuntimeCore(C collective, std::string backend)
      : impl_(std::make_shared<Impl>(std::move(collective), std::move(backend))) {}

  int rank() const noexcept { return impl_->rank; }
  int size() const noexcept { return impl_->size; }
  const std::string& name() const noexcept { return impl_->name; }
  const std::string& backend() const noexcept { return impl_->backend; }
  const Options& options() const noexcept {
    return visit([](auto& c) -> const Options& { return c.options(); });
  }
  FuseSpace& fuse_space() noexcept { return impl_->fuse; }

  template <class C>
  C* get_if() noexcept {
    return std::get_if<C>(&impl_->collective);
  }

  std::error_code all_reduce(Bytes in, MutableBytes out, const Reduction& r) noexcept {
    return visit([&](auto& c) { return c.core().all_reduce(in, out, r); });
  }
  std::error_code reduce_scatter(Bytes in, MutableBytes out, const Reduction& r) noexcept {
    return visit([&](auto& c) { return c.core().reduce_scatter(in, out, r); });
  }
  std::error_code all_gather(Bytes in, MutableBytes out) noexcept {
    return visit([&](auto& c) { return c.core().all_gather(in, out); });
  }
  std::error_code broadcast(MutableBytes data, int root) noexcept {
    return visit([&](auto& c) { return c.core().broadcast(data, root); });
  }
  std::error_code all_to_all(Bytes in, MutableBytes out) noexcept {
    return visit([&](auto& c) { return c.core().all_to_all(in, out); });
  }
  std::error_code barrier() noexcept {
    return visit([&](auto& c) { return c.core().barrier(); });
  }
  std::error_code send(Bytes data, int dst) noexcept {
    return visit([&](auto& c) { return c.core().send(data, dst); });
  }
  std::error_code recv(MutableBytes data, int src) noexcept {
    return visit([&](auto& c) { return c.core().recv(data, src); });
  }

  Request all_reduce_async(Bytes in, MutableBytes out, const Reduction& r,
                           std::shared_ptr<const void> keep) {
    return visit([&](auto& c) { return c.core().all_reduce_async(in, out, r, std::move(keep)); });
  }
  Request reduce_scatter_async(Bytes in, MutableBytes out, const Reduction& r,
                               std::shared_ptr<const void> keep) {
    return visit(
        [&](auto& c) { return c.core().reduce_scatter_async(in, out, r, std::move(keep)); });
  }
  Request all_gather_async(Bytes in, MutableBytes out) {
    return visit([&](auto& c) { return c.core().all_gather_async(in, out); });
  }
  Request broadcast_async(MutableBytes data, int root) {
    return visit([&](auto& c) { return c.core().broadcast_async(data, root); });
  }
  Request all_to_all_async(Bytes in, MutableBytes out) {
    return visit([&](auto& c) { return c.core().all_to_all_async(in, out); });
  }
  Request barrier_async() {
    return visit([&](auto& c) { return c.core().barrier_async(); });
  }
  Request send_async(Bytes data, int dst) {
    return visit([&](auto& c) { return c.core().send_async(data, dst); });
  }
  Request recv_async(MutableBytes data, int src) {
    return visit([&](auto& c) { return c.core().recv_async(data, src); });
  }

  std::optional<RuntimeCore> split(int color, int key, std::error_code& ec) noexcept {
    return visit([&](auto& c) -> std::optional<RuntimeCore> {
      auto sub = c.split(color, key, ec);
      if (!sub) return std::nullopt;
      try {
        return RuntimeCore(std::move(*sub), impl_->backend);
      } catch (const std::bad_alloc&) {
        ec = std::make_error_code(std::errc::not_enough_memory);
        return std::nullopt;
      }
    });
  }

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace detail

}  // namespace collie
