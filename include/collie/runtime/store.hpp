// collie::Store: the key-value store every bootstrap meets at. Rank 0 runs its coordinator; every
// rank connects with collie's handshake (job token, world size, rank) and sets and gets keys. The
// ring's rendezvous publishes its listening addresses through it; jaccl's queue-pair exchange and
// NCCL's unique-id hand-out are the same pattern: set a key, get everyone's.
#pragma once

#include <chrono>
#include <cstdint>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "collie/core/error.hpp"
#include "collie/runtime/detail/store_client.hpp"
#include "collie/runtime/detail/store_server.hpp"
#include "collie/runtime/hostfile.hpp"
#include "collie/runtime/store_options.hpp"
#include "collie/transport/tcp_config.hpp"

namespace collie {

/// A client of the store: every rank has one; rank 0's also runs the coordinator, which serves
/// until every rank that connected has closed its store (or one operation timeout after rank 0
/// closes its own), so that rank 0 may finish first.
///
/// Protocol: collie's handshake (the transport's 32-byte hello: magic, version, world size, rank,
/// job token), then frames with the transport's 32-byte header: `set(key, value)` (no answer)
/// and `get(keys)` (answered once every key is set, with their values, or with the store's
/// failure). Cost: one connection per rank to rank 0; a get of k values moves their bytes once.
///
/// Failures are the store's for everyone: a rank of this job with another world size, two
/// processes claiming one rank, or a get that times out makes every pending and later request
/// fail with that one message, which names the ranks that never came. A process with another
/// job token is refused alone (the coordinator notes whom it refused). A rank that leaves gives
/// its slot back; if it left while waiting for keys, its own keys are withdrawn too.
///
/// Thread safety: one thread at a time per Store (a get blocks its caller); separate Stores
/// are independent. Moving a Store keeps its connection (and rank 0's coordinator) alive.
///
///   std::error_code ec;
///   auto store = collie::Store::connect(coordinator, rank, size, {.job_token = token},
///                                       "collie nccl: ", ec);
///   if (rank == 0) store->set("nccl/id", unique_id);
///   const std::string keys[] = {"nccl/id"};
///   auto id = store->get(keys, std::chrono::seconds(60), ec);  // every rank: rank 0's id
class Store {
 public:
  /// Connects rank `rank` of `size` to the coordinator at `coordinator` (rank 0 listens there
  /// first), retrying with backoff until `options.connect_timeout`. Errors:
  /// `errc::bad_configuration` (rank 0 cannot listen there; this process was refused; the job
  /// is misconfigured, with the coordinator's reason), `errc::timed_out`,
  /// `errc::connection_lost`, `errc::protocol_error`. The message starts with `where`.
  static std::optional<Store> connect(const Endpoint& coordinator, int rank, int size,
                                      const StoreOptions& options, const std::string& where,
                                      std::error_code& ec) noexcept {
    try {
      Store store;
      store.client_.where_ = where;
      store.client_.options_ = options;
      if (!store.client_.open(coordinator, rank, size, ec)) return std::nullopt;
      return store;
    } catch (const std::bad_alloc&) {
      detail::report_config_error(ec, std::make_error_code(std::errc::not_enough_memory),
                                  where + "out of memory");
      return std::nullopt;
    }
  }

  Store(Store&&) noexcept = default;
  Store& operator=(Store&&) = delete;

  /// Sets `key` to `value`, for every rank to get. Errors: `errc::connection_lost`,
  /// `errc::timed_out` (the coordinator took no bytes within the operation timeout).
  std::error_code set(std::string_view key, std::string_view value) noexcept {
    try {
      detail::store::wire_bytes payload;
      detail::store::put_text(payload, key);
      const auto* p = reinterpret_cast<const std::byte*>(value.data());
      payload.insert(payload.end(), p, p + value.size());
      return client_.send(detail::store::frame(detail::store::set_request, payload), "setting " + std::string(key));
    } catch (const std::bad_alloc&) {
      return std::make_error_code(std::errc::not_enough_memory);
    }
  }

  /// The values of `keys`, in order, once every one is set; the coordinator waits `wait` for
  /// them, this rank a little longer to hear its verdict. Errors: the store's failure
  /// (`errc::timed_out` naming the ranks that never came, `errc::bad_configuration`, ...), or
  /// `errc::connection_lost` when rank 0 has gone.
  std::optional<std::vector<std::string>> get(std::span<const std::string> keys,
                                              std::chrono::milliseconds wait,
                                              std::error_code& ec) noexcept {
    try {
      detail::store::wire_bytes payload;
      detail::store::put_u64(payload, static_cast<std::uint64_t>(wait.count()));
      detail::store::put_u32(payload, static_cast<std::uint32_t>(keys.size()));
      for (const auto& key : keys) detail::store::put_text(payload, key);
      if ((ec = client_.send(detail::store::frame(detail::store::get_request, payload), "asking for keys"))) {
        return std::nullopt;
      }
      detail::store::wire_bytes reply;
      std::uint64_t kind = 0;
      if ((ec = client_.receive(wait + client_.options_.timeout, kind, reply))) return std::nullopt;
      detail::store::Reader reader{reply};
      if (kind == detail::store::error_reply) {
        const auto code = static_cast<errc>(reader.number(4));
        // Rank 0 runs the coordinator: its verdict is this rank's own.
        return client_.failure(ec, code, (client_.server_ ? "" : "the coordinator answered: ") + reader.text());
      }
      std::vector<std::string> values;
      const auto count = reader.number(4);
      for (std::uint64_t i = 0; reader.ok && i < count; ++i) values.push_back(reader.text());
      if (kind != detail::store::values_reply || !reader.ok || values.size() != keys.size()) {
        return client_.failure(ec, errc::protocol_error, "the coordinator's answer is not a store reply");
      }
      return values;
    } catch (const std::bad_alloc&) {
      ec = std::make_error_code(std::errc::not_enough_memory);
      return std::nullopt;
    }
  }

  /// This host's address on the route to the coordinator: one every rank can reach.
  const std::string& local_address() const noexcept { return client_.local_address_; }

 private:
  Store() = default;

  detail::store::Client client_;
};

}  // namespace collie
