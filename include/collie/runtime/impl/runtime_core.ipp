// The operations of the runtime core (runtime/detail/runtime_core.hpp): one std::visit each into
// the typed collective a Group holds. Included by group.hpp when header-only, compiled once by
// src.hpp with COLLIE_SEPARATE_COMPILATION.
#pragma once

#include <new>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <variant>

#include "collie/runtime/detail/runtime_core.hpp"
#include "collie/runtime/detail/runtime_variant.hpp"

namespace collie::detail {

namespace runtime {

// The variant is never valueless (nothing replaces its value), so the visit cannot throw.
template <class F>
decltype(auto) visit(RuntimeVariant& collective, F&& f) noexcept {
  return std::visit(std::forward<F>(f), collective);
}

}  // namespace runtime

COLLIE_DECL int RuntimeCore::rank() const noexcept { return impl_->rank; }
COLLIE_DECL int RuntimeCore::size() const noexcept { return impl_->size; }
COLLIE_DECL const std::string& RuntimeCore::name() const noexcept { return impl_->name; }
COLLIE_DECL const std::string& RuntimeCore::backend() const noexcept { return impl_->backend; }
COLLIE_DECL const Options& RuntimeCore::options() const noexcept {
  return runtime::visit(impl_->collective, [](auto& c) -> const Options& { return c.options(); });
}
COLLIE_DECL FuseSpace& RuntimeCore::fuse_space() noexcept { return impl_->fuse; }

COLLIE_DECL std::error_code RuntimeCore::all_reduce(Bytes in, MutableBytes out,
                                                    const Reduction& r) noexcept {
  return runtime::visit(impl_->collective,
                        [&](auto& c) { return c.core().all_reduce(in, out, r); });
}
COLLIE_DECL std::error_code RuntimeCore::reduce_scatter(Bytes in, MutableBytes out,
                                                        const Reduction& r) noexcept {
  return runtime::visit(impl_->collective,
                        [&](auto& c) { return c.core().reduce_scatter(in, out, r); });
}
COLLIE_DECL std::error_code RuntimeCore::all_gather(Bytes in, MutableBytes out) noexcept {
  return runtime::visit(impl_->collective, [&](auto& c) { return c.core().all_gather(in, out); });
}
COLLIE_DECL std::error_code RuntimeCore::broadcast(MutableBytes data, int root) noexcept {
  return runtime::visit(impl_->collective,
                        [&](auto& c) { return c.core().broadcast(data, root); });
}
COLLIE_DECL std::error_code RuntimeCore::all_to_all(Bytes in, MutableBytes out) noexcept {
  return runtime::visit(impl_->collective, [&](auto& c) { return c.core().all_to_all(in, out); });
}
COLLIE_DECL std::error_code RuntimeCore::barrier() noexcept {
  return runtime::visit(impl_->collective, [&](auto& c) { return c.core().barrier(); });
}
COLLIE_DECL std::error_code RuntimeCore::send(Bytes data, int dst) noexcept {
  return runtime::visit(impl_->collective, [&](auto& c) { return c.core().send(data, dst); });
}
COLLIE_DECL std::error_code RuntimeCore::recv(MutableBytes data, int src) noexcept {
  return runtime::visit(impl_->collective, [&](auto& c) { return c.core().recv(data, src); });
}

COLLIE_DECL Request RuntimeCore::all_reduce_async(Bytes in, MutableBytes out, const Reduction& r,
                                                  std::shared_ptr<const void> keep) {
  return runtime::visit(impl_->collective, [&](auto& c) {
    return c.core().all_reduce_async(in, out, r, std::move(keep));
  });
}
COLLIE_DECL Request RuntimeCore::reduce_scatter_async(Bytes in, MutableBytes out,
                                                      const Reduction& r,
                                                      std::shared_ptr<const void> keep) {
  return runtime::visit(impl_->collective, [&](auto& c) {
    return c.core().reduce_scatter_async(in, out, r, std::move(keep));
  });
}
COLLIE_DECL Request RuntimeCore::all_gather_async(Bytes in, MutableBytes out) {
  return runtime::visit(impl_->collective,
                        [&](auto& c) { return c.core().all_gather_async(in, out); });
}
COLLIE_DECL Request RuntimeCore::broadcast_async(MutableBytes data, int root) {
  return runtime::visit(impl_->collective,
                        [&](auto& c) { return c.core().broadcast_async(data, root); });
}
COLLIE_DECL Request RuntimeCore::all_to_all_async(Bytes in, MutableBytes out) {
  return runtime::visit(impl_->collective,
                        [&](auto& c) { return c.core().all_to_all_async(in, out); });
}
COLLIE_DECL Request RuntimeCore::barrier_async() {
  return runtime::visit(impl_->collective, [&](auto& c) { return c.core().barrier_async(); });
}
COLLIE_DECL Request RuntimeCore::send_async(Bytes data, int dst) {
  return runtime::visit(impl_->collective,
                        [&](auto& c) { return c.core().send_async(data, dst); });
}
COLLIE_DECL Request RuntimeCore::recv_async(MutableBytes data, int src) {
  return runtime::visit(impl_->collective,
                        [&](auto& c) { return c.core().recv_async(data, src); });
}

COLLIE_DECL std::optional<RuntimeCore> RuntimeCore::split(int color, int key,
                                                          std::error_code& ec) noexcept {
  return runtime::visit(impl_->collective, [&](auto& c) -> std::optional<RuntimeCore> {
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

}  // namespace collie::detail
