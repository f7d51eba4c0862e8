// collie::init(): finds the backend the environment set up and returns its group, or a group of
// one rank when nothing is set up (as MLX's mx.distributed.init does).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <system_error>

#include "collie/config.hpp"
#include "collie/core/error.hpp"
#include "collie/runtime/group.hpp"

namespace collie {

/// A group of one rank: what `init()` returns when no backend is configured (as MLX's
/// `mx.distributed.init()` does). Every collective is an identity (reductions and gathers copy
/// their input to their output, in place they do nothing), costs no message and cannot fail;
/// `send`/`recv` fail with `errc::singleton_group`. Its `backend()` is "singleton". Each call
/// makes a new group; they share nothing, so any thread may use its own.
///
///   collie::Group one = collie::singleton_group();
///   one.all_sum(x);  // x unchanged
COLLIE_DECL Group singleton_group();

/// Initialises collie from the environment and returns the group of all ranks.
///
/// - `backend`: "any" (default), or a backend's name: "ring", "jaccl", "mpi" or "nccl" (the
///   descriptors of EnabledBackends, runtime/enabled.hpp). "any" tries every backend compiled in
///   whose environment is present, in the list's order (nccl, ring, mpi, jaccl), and returns the
///   first that connects; with none configured it returns a group of one rank.
/// - `strict`: turns "not configured" into an error (`errc::not_configured`) instead of a
///   singleton group.
///
/// What each backend reads is in its descriptor (runtime/backends/) and in docs/config.md; the
/// ring backend reads `MLX_RANK` + `MLX_HOSTFILE` (or `COLLIE_COORDINATOR` / `MASTER_ADDR` +
/// `MASTER_PORT` with a rank and world size), then `COLLIE_ALGORITHM` and every knob of every
/// algorithm, all checked before anything connects.
///
/// Cost: the backend's set-up, once per process: for the ring, k TCP connections to each
/// neighbour (k = addresses per rank in the hostfile, or `COLLIE_CONNECTIONS` with a
/// coordinator) and a handshake on each, so O(1) messages per rank;
/// with a coordinator, one more connection to rank 0 and a key exchange of O(p) bytes there.
/// Later calls return the cached group at the cost of a mutex.
///
/// Preconditions: every rank of the job calls it (it blocks until its neighbours have); the
/// environment is the one the launcher set.
///
/// Errors (as `errc`): `unknown_backend` (a name that is not a backend, or one not compiled into
/// this build, naming those that are), `not_configured` (with `strict`, nothing set up),
/// `bad_configuration` (a malformed variable or hostfile, naming it, the rank and the entry),
/// `timed_out` (a neighbour or the coordinator never came, naming it),
/// `connection_lost`, `protocol_error` (a process of another job or build). A backend that is
/// configured but fails is always an error, never a silent singleton.
///
/// After a successful init, `init()` and `init("any")` return the same group again (copies of a
/// Group share its connections); a failed attempt is never cached, so a later call can retry.
///
/// Thread safety: safe to call from several threads; the first to get in does the set-up, the
/// others wait for it and share its group.
///
///   std::error_code ec;
///   if (auto world = collie::init("ring", /*strict=*/true, ec)) {
///     world->all_sum(gradients);
///   } else {
///     std::fprintf(stderr, "%s\n", collie::Group::last_error().c_str());
///   }
///
/// Never throws; the overload without `std::error_code&` throws `collie::Error` instead.
COLLIE_DECL std::optional<Group> init(std::string_view backend, bool strict,
                                      std::error_code& ec) noexcept;

/// As above, throwing `collie::Error` (its `code()` the `errc`, its `what()` the one-line
/// message) instead of returning nothing.
///
///   collie::Group world = collie::init();  // a group of one rank when nothing is set up
///   std::printf("rank %d of %d over %s\n", world.rank(), world.size(), world.name().c_str());
COLLIE_DECL Group init(std::string_view backend = "any", bool strict = false);

namespace detail {

// Drops the group a successful init() cached, so that the next init() looks again (for tests
// that start several worlds in one process; the group itself lives on in its copies).
COLLIE_DECL void forget_init_group() noexcept;

}  // namespace detail

}  // namespace collie

#if COLLIE_HEADER_ONLY
#include "collie/runtime/impl/init.ipp"
#endif
