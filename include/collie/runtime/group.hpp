// collie::Group: the runtime face of collie, a handle on whichever Collective<Transport, Algorithm>
// `collie::init()` (or the caller) chose, among the pairs compiled into this build.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

#include "collie/core/collective.hpp"
#include "collie/core/request.hpp"
#include "collie/runtime/enabled.hpp"

namespace collie {

/// A group of ranks and every collective operation on it, chosen at run time.
///
/// A Group holds one of the `EnabledCollectives` (a `std::variant`); each operation is a single
/// `std::visit` into the typed `Collective`, so there is no virtual call and no allocation per
/// message. The operations, their costs, error forms and threading rules are those of
/// `collie::Collective` (collective.hpp); Group forwards every one of them:
///
///   rank(), size(), backend(), name(), split(color, key)
///   all_sum / all_prod / all_max / all_min (data) or (in, out), all_reduce(data[, out], op),
///   all_gather(in, out), sum_scatter(in, out), reduce_scatter(in, out, op),
///   broadcast(data, root), all_to_all(in, out), barrier(), send(data, dst), recv(data, src),
///   all_sum_fused(buffers), and the *_async forms returning a collie::Request;
///   each also with a trailing std::error_code& that makes it non-throwing.
///
/// Copies of a Group share the same connections (like MLX's Group, it is a shared handle).
///
///   collie::Group world = collie::init();
///   std::vector<float> x(10, 1.0f);
///   world.all_sum(x);
class Group {
 public:
  using Variant = typename detail::VariantOf<EnabledCollectives>::type;

  /// Wraps a typed collective; `backend` is the name `backend()` reports ("ring", "inproc", ...).
  template <class T, class A>
    requires std::is_constructible_v<Variant, Collective<T, A>&&>
  Group(Collective<T, A> collective, std::string backend)
      : impl_(std::make_shared<Impl>(Impl{Variant(std::move(collective)), std::move(backend)})) {}

  int rank() const noexcept {
    return std::visit([](const auto& c) { return c.rank(); }, impl_->collective);
  }
  int size() const noexcept {
    return std::visit([](const auto& c) { return c.size(); }, impl_->collective);
  }
  /// The backend name: "ring", "jaccl", "mpi", "nccl", "inproc" or "singleton".
  const std::string& backend() const noexcept { return impl_->backend; }
  /// The policies behind it, "transport/algorithm" (e.g. "inproc/ring").
  std::string name() const {
    return std::visit([](const auto& c) { return c.name(); }, impl_->collective);
  }

  /// The typed collective, when the caller knows (or tests) which one it is.
  template <class C>
  C* get_if() noexcept {
    return std::get_if<C>(&impl_->collective);
  }

  /// Sub-groups with MPI_Comm_split semantics; see `Collective::split`.
  Group split(int color, int key = -1) {
    return std::visit([&](auto& c) { return Group(c.split(color, key), impl_->backend); },
                      impl_->collective);
  }
  std::optional<Group> split(int color, int key, std::error_code& ec) noexcept {
    return std::visit(
        [&](auto& c) -> std::optional<Group> {
          auto sub = c.split(color, key, ec);
          if (!sub) return std::nullopt;
          try {
            return Group(std::move(*sub), impl_->backend);
          } catch (const std::bad_alloc&) {
            ec = std::make_error_code(std::errc::not_enough_memory);
            return std::nullopt;
          }
        },
        impl_->collective);
  }

  /// The full message of the most recent failed call made on this thread.
  static const std::string& last_error() noexcept { return detail::last_error_message; }

#define COLLIE_DETAIL_FORWARD(NAME)                                                        \
  template <class... Args>                                                                 \
  decltype(auto) NAME(Args&&... args) {                                                    \
    return std::visit(                                                                     \
        [&](auto& c) -> decltype(auto) { return c.NAME(std::forward<Args>(args)...); },    \
        impl_->collective);                                                                \
  }

  COLLIE_DETAIL_FORWARD(all_sum)
  COLLIE_DETAIL_FORWARD(all_prod)
  COLLIE_DETAIL_FORWARD(all_max)
  COLLIE_DETAIL_FORWARD(all_min)
  COLLIE_DETAIL_FORWARD(all_reduce)
  COLLIE_DETAIL_FORWARD(all_sum_async)
  COLLIE_DETAIL_FORWARD(all_prod_async)
  COLLIE_DETAIL_FORWARD(all_max_async)
  COLLIE_DETAIL_FORWARD(all_min_async)
  COLLIE_DETAIL_FORWARD(all_reduce_async)
  COLLIE_DETAIL_FORWARD(all_sum_fused)
  COLLIE_DETAIL_FORWARD(all_gather)
  COLLIE_DETAIL_FORWARD(all_gather_async)
  COLLIE_DETAIL_FORWARD(sum_scatter)
  COLLIE_DETAIL_FORWARD(sum_scatter_async)
  COLLIE_DETAIL_FORWARD(reduce_scatter)
  COLLIE_DETAIL_FORWARD(broadcast)
  COLLIE_DETAIL_FORWARD(broadcast_async)
  COLLIE_DETAIL_FORWARD(all_to_all)
  COLLIE_DETAIL_FORWARD(barrier)
  COLLIE_DETAIL_FORWARD(send)
  COLLIE_DETAIL_FORWARD(send_async)
  COLLIE_DETAIL_FORWARD(recv)
  COLLIE_DETAIL_FORWARD(recv_async)
#undef COLLIE_DETAIL_FORWARD

 private:
  struct Impl {
    Variant collective;
    std::string backend;
  };
  std::shared_ptr<Impl> impl_;
};

}  // namespace collie
