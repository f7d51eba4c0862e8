// The event-loop side of the TCP engine (engine.hpp): writing queued messages, reading and
// routing arriving ones through the frame reader and the matching rule, failing a peer when its
// connection breaks, and spreading an abort. Defined out of the class, as Asio's impl/ files are,
// so that engine.hpp reads as the composition of the parts; included at the end of engine.hpp.
#pragma once

#include "collie/transport/detail/tcp/engine.hpp"

namespace collie::detail::tcp {

inline Connection* Engine::connection_for(const Op& op) const {
  const Peer& p = peers_[static_cast<std::size_t>(op.peer)];
  const std::uint64_t key = op.tag * 0x9E3779B97F4A7C15ULL ^ op.context;
  const bool both_kinds = p.made != 0 && p.made != p.connections.size();
  return p.connections[(key >> 32) % (both_kinds ? p.made : p.connections.size())];
}

inline void Engine::enqueue_send(Op& op) {
  Connection* c = connection_for(op);
  op.connection = c;
  c->send_queue.push_back(&op);
  if (!c->writing) {
    c->writing = true;
    asio::post(io_, Task{this, Task::write_next, c, nullptr});
  }
}

inline void Engine::send_now(Connection& c, Op& op) {
  op.connection = &c;
  op.state = Op::State::active;
  int error = 0;
  const long sent = write_message(c.socket.native_handle(), op.header, op.send_data, op.bytes, 0, error);
  if (sent == static_cast<long>(Header::size + op.bytes)) {
    op.finish({});
    return;
  }
  c.writing = true;
  c.write_op = &op;
  c.written = sent > 0 ? static_cast<std::size_t>(sent) : 0;
  asio::post(io_, Task{this, Task::write_rest, &c, nullptr});
}

inline void Engine::write_next(Connection* c) {
  {
    std::lock_guard lock(mutex_);
    if (c->abort_frame != nullptr) {
      c->write_op = const_cast<Op*>(std::exchange(c->abort_frame, nullptr));
    } else if (Op* op = c->send_queue.pop_front()) {
      op->state = Op::State::active;
      c->write_op = op;
    } else {
      c->writing = false;
      return;
    }
    c->written = 0;
  }
  write_rest(c);
}

inline void Engine::write_rest(Connection* c) {
  for (;;) {
    Op* op = c->write_op;
    const std::size_t total = Header::size + op->bytes;
    int error = 0;
    while (c->written < total) {
      const long sent = write_message(c->socket.native_handle(), op->header, op->send_data,
                                      op->bytes, c->written, error);
      if (sent < 0) return write_failed(c, op);
      if (sent == 0) {
        c->socket.async_wait(tcp::socket::wait_write, Ready{this, c, true});
        return;
      }
      c->written += static_cast<std::size_t>(sent);
    }
    if (op->abort_frame) {
      abort_written();
      return;  // nothing more goes out on an aborting connection
    }
    {
      std::lock_guard lock(mutex_);
      op->finish({});
      Op* next = nullptr;
      if (c->abort_frame != nullptr) {
        next = const_cast<Op*>(std::exchange(c->abort_frame, nullptr));
      } else if ((next = c->send_queue.pop_front()) != nullptr) {
        next->state = Op::State::active;
      } else {
        c->writing = false;
      }
      c->write_op = next;
      c->written = 0;
    }
    cv_.notify_all();
    if (c->write_op == nullptr) return;
  }
}

inline void Engine::write_failed(Connection* c, Op* op) {
  if (op->abort_frame) {
    abort_written();
    return;
  }
  {
    std::lock_guard lock(mutex_);
    Peer& p = peers_[static_cast<std::size_t>(c->peer)];
    if (p.status == Peer::Status::failed) {
      op->finish(p.failure);
    } else if (c->reader_done) {
      op->finish(errc::connection_lost);
    } else {
      c->broken_send = op;              // failed with the peer, once the reader knows why
      queue_resume(c, /*force=*/true);  // a held reader must go on to the end to know it
    }
  }
  cv_.notify_all();
}

inline void Engine::pump(Connection* c, bool drained) {
  if (c->read_pending) return;
  for (int calls = 0;;) {
    if (c->reader_done) return;
    if (!c->socket.is_open()) return reader_ended(c, asio::error::operation_aborted);
    if (c->held) return;  // resumed by a receive from the peer (see route)
    if (c->reader.has_inbox_bytes()) {
      handle(c, c->reader.take_from_inbox());
      continue;
    }
    if (drained) return arm(c);
    if (calls++ == pump_calls) {
      // A fast sender can keep this socket full: let the loop's other handlers run.
      asio::post(io_, Task{this, Task::pump, c, nullptr});
      return;
    }
    const auto [into, want] = c->reader.next_read();
    ssize_t got;
    do {
      got = ::recv(c->socket.native_handle(), into, want, MSG_DONTWAIT);
    } while (got < 0 && errno == EINTR);
    if (got == 0) return reader_ended(c, asio::error::eof);
    if (got < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return arm(c);
      return reader_ended(c, std::error_code(errno, asio::error::get_system_category()));
    }
    handle(c, c->reader.took(into, static_cast<std::size_t>(got), want, drained));
  }
}

inline void Engine::arm(Connection* c) {
  if (c->read_pending || c->wait_armed) return;
  if (c->watched) {
    c->wait_armed = true;
    c->socket.async_wait(tcp::socket::wait_read, Ready{this, c, false});
    return;
  }
  const auto [into, want] = c->reader.next_read();
  c->read_pending = true;
  c->socket.async_read_some(asio::buffer(into, want), ReadDone{this, c, into, want});
}

inline void Engine::read_done(const ReadDone& r, const std::error_code& ec, std::size_t got) {
  Connection* c = r.c;
  c->read_pending = false;
  if (c->reader_done) return;
  if (ec) return reader_ended(c, ec);
  bool drained = false;
  handle(c, c->reader.took(r.into, got, r.want, drained));
  pump(c, drained);
}

inline void Engine::ready(const Ready& r, const std::error_code& ec) {
  Connection* c = r.c;
  if (r.writing) {
    if (ec) return write_failed(c, c->write_op);
    return write_rest(c);
  }
  c->wait_armed = false;
  if (c->reader_done) return;
  if (ec) return reader_ended(c, ec);
  pump(c);
}

inline void Engine::handle(Connection* c, FrameReader::Event event) {
  if (event == FrameReader::Event::header) return on_header(c);
  if (event == FrameReader::Event::end) end_of_part(c);
}

inline void Engine::on_header(Connection* c) {
  const Header h = Header::decode(c->reader.header());
  if (h.magic != message_magic) {
    fail_peer(c->peer, errc::protocol_error, "it sent a corrupt message header");
    return;  // the connection is closed: pump stops
  }
  if ((h.flags & Header::abort_flag) != 0) {
    // The peer gave up on the group and says why; read the reason, then treat it as gone.
    c->reason.resize(static_cast<std::size_t>(std::min<std::uint64_t>(h.bytes, 4000)));
    c->reader.expect(FrameReader::Part::reason, c->reason.data(), c->reason.size());
    if (c->reason.empty()) end_of_part(c);
    return;
  }
  route_payload(c, h, /*may_hold=*/true);
}

inline void Engine::route_payload(Connection* c, const Header& h, bool may_hold) {
  std::byte* target = nullptr;
  FrameReader::Part part = FrameReader::Part::payload;
  {
    std::lock_guard lock(mutex_);
    Peer& p = peers_[static_cast<std::size_t>(c->peer)];
    const Routing routing = route(p.queues, h, p.status == Peer::Status::failed, may_hold);
    switch (routing.route) {
      case Route::skip:
        part = FrameReader::Part::skip;
        break;
      case Route::deliver:
        p.queues.receives.erase(routing.op);
        routing.op->state = Op::State::active;
        routing.op->connection = c;
        c->reading_into = routing.op;
        target = routing.op->recv_data;
        break;
      case Route::mismatch:
        // The receive fails; the payload is skipped so the stream stays in step.
        p.queues.receives.erase(routing.op);
        routing.op->finish(errc::protocol_error);
        part = FrameReader::Part::skip;
        break;
      case Route::hold:
        c->held = true;
        return;
      case Route::stash:
        try {
          c->reading_unexpected = buffers_.stash(p.queues, h);
        } catch (const std::bad_alloc&) {
          part = FrameReader::Part::skip;  // lost: its receive fails with the peer below
          break;
        }
        c->reading_to_unexpected = true;
        target = c->reading_unexpected->data();
        break;
    }
  }
  cv_.notify_all();
  c->reader.expect(part, target, h.bytes);
  if (h.bytes == 0) end_of_part(c);
}

inline void Engine::resume(Connection* c, bool force) {
  {
    std::lock_guard lock(mutex_);
    c->resume_posted = false;
    if (!c->held) return;
    c->held = false;
  }
  route_payload(c, Header::decode(c->reader.header()), /*may_hold=*/!force);
  if (!c->held) pump(c);
}

inline void Engine::queue_resume(Connection* c, bool force) {
  if (!c->held || (c->resume_posted && !force)) return;
  c->resume_posted = true;
  asio::post(io_, Task{this, force ? Task::resume_forced : Task::resume, c, nullptr});
}

inline void Engine::resume_held(Peer& p) {
  for (Connection* c : p.connections) queue_resume(c, /*force=*/false);
}

inline void Engine::end_of_part(Connection* c) {
  switch (c->reader.part()) {
    case FrameReader::Part::payload:
      return on_payload(c, {});
    case FrameReader::Part::reason: {
      c->reader.next_header();
      const std::string reason(reinterpret_cast<const char*>(c->reason.data()), c->reason.size());
      // On to the end of the stream (or the close this makes).
      return fail_peer(c->peer, errc::connection_lost, "aborted the group: " + reason);
    }
    default:
      c->reader.next_header();
  }
}

inline void Engine::on_payload(Connection* c, std::error_code ec) {
  c->reader.next_header();
  {
    std::lock_guard lock(mutex_);
    if (c->reading_into != nullptr) {
      std::exchange(c->reading_into, nullptr)->finish(ec ? std::error_code(errc::connection_lost) : std::error_code());
    } else if (c->reading_to_unexpected) {
      c->reading_to_unexpected = false;
      auto it = c->reading_unexpected;
      Peer& p = peers_[static_cast<std::size_t>(c->peer)];
      if (it->orphaned) {
        buffers_.release(p.queues, it);
      } else if (!ec) {
        it->complete = true;
        if (Op* op = it->claimed_by) {
          // Claimed while arriving: hand it over now (rare, so copying under the lock is fine).
          std::error_code result;
          if (it->size != op->bytes) {
            result = errc::protocol_error;
          } else if (op->bytes != 0) {
            std::memcpy(op->recv_data, it->data(), op->bytes);
          }
          op->finish(result);
          buffers_.release(p.queues, it);
        }
      }
    }
  }
  cv_.notify_all();
  if (ec) connection_failed(c, ec);
}

inline void Engine::reader_ended(Connection* c, std::error_code ec) {
  if (c->reader.part() == FrameReader::Part::payload) return on_payload(c, ec);
  connection_failed(c, ec);
}

inline void Engine::connection_failed(Connection* c, std::error_code ec) {
  {
    std::lock_guard lock(mutex_);
    c->reader_done = true;
    if (c->broken_send != nullptr) std::exchange(c->broken_send, nullptr)->finish(errc::connection_lost);
  }
  cv_.notify_all();
  if (c->draining) {
    // An aborted group's connection reached its end: now it can close without a reset.
    std::error_code ignored;
    c->socket.close(ignored);
    {
      std::lock_guard lock(mutex_);
      c->draining = false;
      --draining_;
      if (c->broken_send != nullptr) std::exchange(c->broken_send, nullptr)->finish(errc::connection_lost);
      if (c->reading_into != nullptr) std::exchange(c->reading_into, nullptr)->finish(errc::connection_lost);
    }
    cv_.notify_all();
    return;
  }
  if (stopping_ || ec == asio::error::operation_aborted) {
    // Our own close: fail_peer already accounted for it.
    std::lock_guard lock(mutex_);
    if (c->reading_into != nullptr) std::exchange(c->reading_into, nullptr)->finish(errc::connection_lost);
    if (c->broken_send != nullptr) std::exchange(c->broken_send, nullptr)->finish(errc::connection_lost);
    cv_.notify_all();
    return;
  }
  if (ec == asio::error::eof) {
    // A clean end of stream delivers everything sent before it, but the peer's other
    // connections may still carry messages sent earlier: the peer counts as gone only once
    // every connection to it has ended.
    bool last = false;
    {
      std::lock_guard lock(mutex_);
      Peer& p = peers_[static_cast<std::size_t>(c->peer)];
      auto it = std::find(p.connections.begin(), p.connections.end(), c);
      if (it != p.connections.end()) {
        c->send_queue.drain([&](Op& op) { op.finish(errc::connection_lost); });
        if (it - p.connections.begin() < static_cast<std::ptrdiff_t>(p.made)) --p.made;
        p.connections.erase(it);
        std::error_code ignored;
        c->socket.close(ignored);
        last = p.connections.empty();
      }
    }
    cv_.notify_all();
    if (last) fail_peer(c->peer, errc::connection_lost, "closed its connection (exited or died)");
    return;
  }
  fail_peer(c->peer, errc::connection_lost,
            concat({"lost its connection: ", ec.message(), " (it died, or the network failed)"}));
}

inline void Engine::fail_peer(int peer, errc code, const std::string& why, bool drain) {
  std::vector<Connection*> to_close;
  {
    std::lock_guard lock(mutex_);
    Peer& p = peers_[static_cast<std::size_t>(peer)];
    if (p.status == Peer::Status::failed) return;
    p.status = Peer::Status::failed;
    p.failure = code;
    p.failure_message = why;
    if (config_.verbose) std::fprintf(stderr, "[collie ring] rank %d: lost rank %d: %s\n", rank_, peer, why.c_str());
    auto fail_all = [&](Chain<Op>& q) { q.drain([&](Op& op) { op.finish(code); }); };
    fail_all(p.waiting_sends);
    fail_all(p.queues.receives);
    // Messages that arrived whole stay claimable; half-arrived ones are lost. One that a
    // connection is still reading into stays until that read ends (a draining connection
    // keeps reading), and is dropped then.
    for (auto it = p.queues.unexpected.begin(); it != p.queues.unexpected.end();) {
      if (it->complete) {
        ++it;
        continue;
      }
      if (it->claimed_by != nullptr) std::exchange(it->claimed_by, nullptr)->finish(code);
      const bool being_read = std::any_of(p.connections.begin(), p.connections.end(), [&](Connection* c) {
        return c->reading_to_unexpected && c->reading_unexpected == it;
      });
      if (being_read) {
        it->orphaned = true;
        ++it;
      } else {
        buffers_.release(p.queues, it++);
      }
    }
    for (Connection* c : p.connections) {
      fail_all(c->send_queue);
      if (c->broken_send != nullptr) std::exchange(c->broken_send, nullptr)->finish(code);
      if (c->held) {
        // Its message is dropped with the peer; the reader goes on to the end of the stream
        // (draining) or to the close below, and ends there.
        c->held = false;
        c->reader.expect(FrameReader::Part::skip, nullptr, Header::decode(c->reader.header()).bytes);
        asio::post(io_, Task{this, Task::pump, c, nullptr});
      }
      to_close.push_back(c);
      if (drain) {
        c->draining = true;
        ++draining_;
      }
    }
    p.connections.clear();
    p.made = 0;
    if (setup_pending()) {
      note_setup_error(code, concat({"lost rank ", number(peer), " during set-up: ", why}));
    }
  }
  cv_.notify_all();
  for (Connection* c : to_close) {
    std::error_code ignored;
    if (drain) {
      c->socket.shutdown(tcp::socket::shutdown_send, ignored);
      continue;
    }
    c->socket.shutdown(tcp::socket::shutdown_both, ignored);
    c->socket.close(ignored);  // pending reads and waits complete with operation_aborted
  }
}

inline void Engine::abort_begin() {
  std::vector<Connection*> idle;
  {
    std::lock_guard lock(mutex_);
    for (auto& p : peers_) {
      if (p.status == Peer::Status::failed || p.connections.empty()) continue;
      Connection* c = p.connections.front();
      ++abort_->pending;
      if (c->writing) {
        c->abort_frame = &abort_->frame;
      } else {
        c->writing = true;
        c->write_op = &abort_->frame;
        c->written = 0;
        idle.push_back(c);
      }
    }
  }
  if (abort_->pending == 0) return abort_close();
  for (Connection* c : idle) write_rest(c);
  // A peer that stopped reading must not hold the abort up.
  abort_->timer.expires_after(std::chrono::milliseconds(1000));
  abort_->timer.async_wait(AbortTimeout{this});
}

inline void Engine::abort_written() {
  if (--abort_->pending == 0) abort_close();
}

inline void Engine::abort_close() {
  if (abort_->closed) return;
  abort_->closed = true;
  for (int peer = 0; peer < size_; ++peer) {
    fail_peer(peer, errc::connection_lost, "this rank aborted the group", /*drain=*/true);
  }
  {
    std::lock_guard lock(mutex_);
    abort_->finished = true;
  }
  cv_.notify_all();
}

}  // namespace collie::detail::tcp
