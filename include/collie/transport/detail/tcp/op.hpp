// The operations of the TCP engine: one posted send or receive, and the pool they come from, so
// that steady traffic allocates nothing per message.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <system_error>
#include <vector>

#include "collie/core/call.hpp"
#include "collie/core/detail/block_pool.hpp"
#include "collie/transport/detail/tcp/wire.hpp"

namespace collie::detail::tcp {

struct Connection;

// One posted send or receive.
struct Op {
  enum class State : std::uint8_t { free, queued, active, done };
  bool is_send = false;
  int peer = 0;  // world rank
  std::uint64_t context = 0;
  Tag tag = 0;
  const std::byte* send_data = nullptr;
  std::byte* recv_data = nullptr;
  std::size_t bytes = 0;
  // Written under the engine mutex; read without it only by a spinning wait (Engine::wait),
  // which then takes the mutex to read `result`.
  std::atomic<State> state{State::free};
  std::error_code result;
  Connection* connection = nullptr;  // the connection moving it while active
  Bytes<Header::size> header{};      // sends: the encoded header, kept alive for the write
  Op* next_free = nullptr;
  Op* chain_prev = nullptr;  // in a queue of its peer or connection (at most one at a time)
  Op* chain_next = nullptr;
  bool abort_frame = false;  // the reason of an abort, not a user's send

  // Lock held: over, with `ec`.
  void finish(std::error_code ec) noexcept {
    result = ec;
    state.store(State::done, std::memory_order_release);
  }
  bool is_done() const noexcept { return state.load(std::memory_order_acquire) == State::done; }
};

// Ops in blocks of 64, handed out and taken back through a free list. Not thread-safe: the
// engine calls it with its mutex held.
class OpPool : public BlockPool<Op> {
 public:
  void recycle(Op* op) noexcept {
    op->state = Op::State::free;
    BlockPool<Op>::recycle(op);
  }
};

}  // namespace collie::detail::tcp
