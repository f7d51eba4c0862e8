// The state of a group that does not depend on its policies: settings, tag counters, staging
// memory, and the error plumbing (the sticky abort and the messages that name the operation, the
// step and the peer). Written once, not once per (transport, algorithm) pair: a pair adds only
// its transport, its algorithm, and a few function pointers for what the transport knows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "collie/core/call.hpp"
#include "collie/core/detail/arena.hpp"
#include "collie/core/detail/text.hpp"
#include "collie/core/error.hpp"
#include "collie/core/options.hpp"

namespace collie::detail {

// "collie[inproc/ring] all_reduce: <text> (nothing was sent)": a mistake of the caller, found
// before anything moved. Sets the thread's last error message and returns `code`.
inline std::error_code invalid_call(std::string_view name, std::string_view what,
                                    std::string_view text,
                                    errc code = errc::invalid_argument) noexcept {
  try {
    last_error_message = concat({"collie[", name, "] ", what, ": ", text, " (nothing was sent)"});
  } catch (...) {
    // Out of memory for the text: the error code alone must do.
  }
  return code;
}

// Memory of one thread of a group: the staging the algorithm gets through its Call, the staging
// of a composition around the algorithm (alive at the same time), and per-call working memory.
struct Lane {
  Scratch scratch;
  Scratch compose;
  Arena arena;
};

// Where the fused all_sum packs its buffers: reused, so steady use allocates nothing.
struct FuseSpace {
  Scratch packed;
  std::vector<std::span<std::byte>> pending;
};

class CoreState {
 public:
  // What the policies know, reached without naming their types.
  struct Hooks {
    void* transport = nullptr;
    std::string (*describe_peer)(const void* transport, int peer) = nullptr;
    std::string (*failure_reason)(const void* transport, int peer) = nullptr;
    void (*abort)(void* transport, std::string_view reason) noexcept = nullptr;
  };

  CoreState(std::string policy_name, int rank, int size, Options options, std::uint64_t context)
      : name(std::move(policy_name)), rank(rank), size(size), options(options), context(context),
        send_sequence(static_cast<std::size_t>(size), 0),
        recv_sequence(static_cast<std::size_t>(size), 0) {}
  CoreState(const CoreState&) = delete;
  CoreState& operator=(const CoreState&) = delete;

  std::string name;  // "transport/algorithm", for messages
  int rank;
  int size;
  Options options;
  std::uint64_t context;  // 0 for a world group, derived by split() otherwise
  std::uint64_t split_count = 0;
  Hooks hooks;
  Lane caller;      // calls on the caller's thread
  Lane background;  // the asynchronous collectives, on the worker thread
  FuseSpace fuse;

  // ----- tags ----------------------------------------------------------------------------------

  // Collective tags have the top bit clear; point-to-point tags set it, and count per peer and
  // direction (ranks do not agree on how many messages they exchanged with others).
  static constexpr Tag p2p_bit = Tag{1} << 63;

  Tag next_collective_tag() noexcept {
    constexpr std::uint64_t sequences = p2p_bit / Call::tag_span;
    return (collective_sequence_++ % sequences) * Call::tag_span;
  }
  Tag next_send_tag(int peer) noexcept {
    return p2p_bit | send_sequence[static_cast<std::size_t>(peer)]++;
  }
  Tag next_recv_tag(int peer) noexcept {
    return p2p_bit | recv_sequence[static_cast<std::size_t>(peer)]++;
  }

  // ----- errors --------------------------------------------------------------------------------

  // A call on a group that an earlier I/O failure aborted fails at once.
  std::error_code refuse_if_aborted(std::string_view what) noexcept {
    std::lock_guard lock(error_mutex_);
    if (!aborted_) return {};
    set_message([&] {
      return concat({"collie[", name, "] ", what, ": the group was aborted by an earlier error (",
                     aborted_message_, "); create a new group"});
    });
    return errc::aborted;
  }

  // Marks the group aborted for good and, the first time, tells the peers at once, instead of
  // letting each of them time out on this rank.
  void abort_group(std::error_code ec, const std::string& message) noexcept {
    bool first = false;
    {
      std::lock_guard lock(error_mutex_);
      if (!aborted_) {
        aborted_ = ec;
        try {
          aborted_message_ = message;
        } catch (...) {
          // Out of memory: later calls still fail with errc::aborted, only without the reason.
        }
        first = true;
      }
    }
    if (first) hooks.abort(hooks.transport, message);
  }

  // The first I/O failure of one call, as the algorithm saw it (see Call::failed).
  struct Failure {
    CoreState* state;
    std::string_view what;
    std::string message;
    bool reported = false;
  };

  static void on_io_failure(void* context, const Call& call, std::error_code ec) {
    auto& failure = *static_cast<Failure*>(context);
    if (failure.reported) return;
    failure.reported = true;
    failure.message = failure.state->describe(failure.what, call, ec);
    failure.state->abort_group(ec, failure.message);
  }

  // After a call failed with `ec`: the message (already made if the failure was reported while
  // the call ran), and the abort for an I/O failure.
  void conclude(Failure& failure, const Call& call, std::error_code ec) noexcept {
    try {
      if (!failure.reported) {
        failure.message = describe(failure.what, call, ec);
        if (is_io_failure(ec)) abort_group(ec, failure.message);
      }
      last_error_message = std::move(failure.message);
    } catch (...) {
      if (is_io_failure(ec)) abort_group(ec, {});
    }
  }

  // "collie[tcp/ring] all_reduce: reduce-scatter step 2 of 3, waiting for rank 3 (10.0.0.4:5000):
  // timed out after 60000 ms. Check that ...".
  std::string describe(std::string_view what, const Call& call, std::error_code ec) const {
    const Progress& at = call.progress();
    std::string text = concat({"collie[", name, "] ", what, ": ", at.phase});
    if (at.steps > 0) text += concat({" step ", number(at.step + 1), " of ", number(at.steps)});
    const std::string peer = at.peer >= 0 ? hooks.describe_peer(hooks.transport, at.peer) : "a peer";
    if (at.peer >= 0) text += concat({", waiting for ", peer});
    text += concat({": ", ec.message()});
    if (ec == errc::timed_out) {
      text += concat({" after ", number(static_cast<std::int64_t>(call.timeout().count())),
                      " ms. Check that ", peer,
                      " is alive and calls the same collectives in the same order, or raise "
                      "Options::timeout (COLLIE_TIMEOUT_MS)"});
    } else if (ec == errc::connection_lost) {
      std::string reason;
      if (at.peer >= 0 && hooks.failure_reason != nullptr) {
        reason = hooks.failure_reason(hooks.transport, at.peer);
      }
      text += concat({": ", peer, " ", reason.empty() ? "closed its connection or died" : reason,
                      "; see its own output"});
    } else if (ec == errc::protocol_error) {
      text += concat({": ", peer,
                      " sent a message of another size; every rank must call the same collective "
                      "with the same buffer sizes"});
    }
    return text;
  }

 private:
  template <class Make>
  static void set_message(Make&& make) noexcept {
    try {
      last_error_message = make();
    } catch (...) {
      // Out of memory for the text: the error code alone must do.
    }
  }

  std::uint64_t collective_sequence_ = 0;
  std::vector<std::uint64_t> send_sequence;  // per peer, for point-to-point tags
  std::vector<std::uint64_t> recv_sequence;
  mutable std::mutex error_mutex_;
  std::error_code aborted_;  // sticky once an I/O failure happened
  std::string aborted_message_;
};

// Runs one communicating call of a group: fails fast on an aborted group, gives the body (the
// algorithm) a Call with the lane's memory, and turns a failure into a message naming the
// operation, step and peer. Memory exhaustion inside the body counts as an I/O failure: the
// algorithm stopped half-way, and the peers would otherwise wait for it.
template <class Body>
std::error_code run_call(CoreState& s, std::string_view what, Tag tag, Lane& lane,
                         Body&& body) noexcept {
  if (auto ec = s.refuse_if_aborted(what)) return ec;
  Call call(tag, s.options.timeout, lane.scratch, &lane.arena);
  CoreState::Failure failure{&s, what, {}};
  call.on_failure(&CoreState::on_io_failure, &failure);
  std::error_code ec;
  try {
    lane.arena.reset();
    ec = body(call);
  } catch (const std::bad_alloc&) {
    ec = std::make_error_code(std::errc::not_enough_memory);
  }
  if (ec) s.conclude(failure, call, ec);
  return ec;
}

}  // namespace collie::detail
