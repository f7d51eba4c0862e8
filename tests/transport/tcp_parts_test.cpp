// The TCP engine's parts on their own, without a network: matching (where an arriving message
// goes, the budget that leaves a message in the socket, the reuse of unexpected buffers), the
// frame reader (headers and payloads cut anywhere by the reads), and the operation pool.
#include "collie/transport/detail/tcp/framing.hpp"
#include "collie/transport/detail/tcp/matching.hpp"
#include "collie/transport/detail/tcp/op.hpp"

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <vector>

namespace tcp = collie::detail::tcp;

namespace {

tcp::Header header(std::uint64_t context, std::uint64_t tag, std::uint64_t bytes) {
  tcp::Header h;
  h.context = context;
  h.tag = tag;
  h.bytes = bytes;
  return h;
}

// A posted receive, as the engine fills it in.
struct Receive : tcp::Op {
  Receive(std::uint64_t c, std::uint64_t t, std::size_t n) {
    context = c;
    tag = t;
    bytes = n;
  }
};

// Feeds `bytes` to `reader` as reads of at most `step` bytes would, collecting what it reports.
struct Feed {
  tcp::FrameReader& reader;
  std::vector<tcp::Header> headers;
  int ends = 0;
  // What to do after a header: where its payload goes.
  std::byte* target = nullptr;

  void push(const std::vector<std::byte>& bytes, std::size_t step) {
    std::size_t at = 0;
    while (at < bytes.size()) {
      auto [into, room] = reader.next_read();
      const std::size_t got = std::min({room, step, bytes.size() - at});
      std::memcpy(into, bytes.data() + at, got);
      at += got;
      bool drained = false;
      handle(reader.took(into, got, std::min(room, step), drained));
      while (reader.has_inbox_bytes()) handle(reader.take_from_inbox());
    }
  }

  void handle(tcp::FrameReader::Event event) {
    if (event == tcp::FrameReader::Event::header) {
      const tcp::Header h = tcp::Header::decode(reader.header());
      headers.push_back(h);
      if (h.bytes == 0) {
        ++ends;
        reader.next_header();
      } else {
        reader.expect(tcp::FrameReader::Part::payload, target, h.bytes);
        target += h.bytes;
      }
    } else if (event == tcp::FrameReader::Event::end) {
      ++ends;
      reader.next_header();
    }
  }
};

std::vector<std::byte> frame(const tcp::Header& h, std::byte fill) {
  tcp::Bytes<tcp::Header::size> b{};
  h.encode_into(b);
  std::vector<std::byte> out(b.begin(), b.end());
  out.insert(out.end(), h.bytes, fill);
  return out;
}

}  // namespace

TEST_CASE("a message goes to the first receive posted for its context and tag") {
  tcp::PeerQueues q;
  Receive other_tag(1, 8, 16), first(1, 7, 16), second(1, 7, 16);
  q.receives.push_back(&other_tag);
  q.receives.push_back(&first);
  q.receives.push_back(&second);
  const tcp::Routing r = tcp::route(q, header(1, 7, 16), false, true);
  CHECK(r.route == tcp::Route::deliver);
  CHECK(r.op == &first);
}

TEST_CASE("a message never matches a receive of another context") {
  tcp::PeerQueues q;
  Receive elsewhere(2, 7, 16);
  q.receives.push_back(&elsewhere);
  CHECK(tcp::route(q, header(1, 7, 16), false, true).route == tcp::Route::stash);
}

TEST_CASE("a message of another size than its receive fails that receive") {
  tcp::PeerQueues q;
  Receive posted(1, 7, 16);
  q.receives.push_back(&posted);
  const tcp::Routing r = tcp::route(q, header(1, 7, 17), false, true);
  CHECK(r.route == tcp::Route::mismatch);
  CHECK(r.op == &posted);
}

TEST_CASE("a message from a failed peer is skipped whatever is posted") {
  tcp::PeerQueues q;
  Receive posted(1, 7, 16);
  q.receives.push_back(&posted);
  CHECK(tcp::route(q, header(1, 7, 16), true, true).route == tcp::Route::skip);
}

TEST_CASE("past the byte budget a message waits in the socket until a receive is posted") {
  tcp::PeerQueues q;
  tcp::UnexpectedBuffers spares;
  const std::size_t half = tcp::budget_bytes / 2;
  REQUIRE(tcp::route(q, header(1, 1, half), false, true).route == tcp::Route::stash);
  spares.stash(q, header(1, 1, half));
  REQUIRE(tcp::route(q, header(1, 2, half), false, true).route == tcp::Route::stash);
  spares.stash(q, header(1, 2, half));
  CHECK(tcp::route(q, header(1, 3, 1), false, true).route == tcp::Route::hold);
  // Reading without the right to hold (the message is already partly in memory) stashes it.
  CHECK(tcp::route(q, header(1, 3, 1), false, false).route == tcp::Route::stash);
  // Any receive from the peer lets it in, even one for another tag.
  Receive later(1, 99, 8);
  q.receives.push_back(&later);
  CHECK(tcp::route(q, header(1, 3, 1), false, true).route == tcp::Route::stash);
}

TEST_CASE("past the message budget a message waits in the socket") {
  tcp::PeerQueues q;
  tcp::UnexpectedBuffers spares;
  for (std::size_t i = 0; i < tcp::budget_messages; ++i) {
    REQUIRE(tcp::route(q, header(1, i, 1), false, true).route == tcp::Route::stash);
    spares.stash(q, header(1, i, 1));
  }
  CHECK(tcp::route(q, header(1, 1000, 1), false, true).route == tcp::Route::hold);
}

TEST_CASE("a receive takes the first unclaimed message of its context and tag, in arrival order") {
  tcp::PeerQueues q;
  tcp::UnexpectedBuffers spares;
  auto first = spares.stash(q, header(1, 7, 4));
  auto second = spares.stash(q, header(1, 7, 4));
  spares.stash(q, header(2, 7, 4));
  CHECK_FALSE(q.has_complete(1, 7));
  first->complete = true;
  CHECK(q.has_complete(1, 7));
  CHECK(q.find_unexpected(1, 7) == first);
  Receive claimer(1, 7, 4);
  first->claimed_by = &claimer;
  CHECK(q.find_unexpected(1, 7) == second);
  second->orphaned = true;
  CHECK(q.find_unexpected(1, 7) == q.unexpected.end());
  CHECK(q.unexpected_bytes == 12);
}

TEST_CASE("released unexpected buffers are reused, the smallest that fits first") {
  tcp::PeerQueues q;
  tcp::UnexpectedBuffers spares;
  auto big = spares.stash(q, header(1, 1, 4096));
  auto small = spares.stash(q, header(1, 2, 64));
  const std::byte* big_buffer = big->data();
  const std::byte* small_buffer = small->data();
  spares.release(q, big);
  spares.release(q, small);
  CHECK(q.unexpected.empty());
  CHECK(q.unexpected_bytes == 0);
  CHECK(spares.spare_records() == 2);
  CHECK(spares.stash(q, header(1, 3, 32))->data() == small_buffer);
  CHECK(spares.stash(q, header(1, 4, 1000))->data() == big_buffer);
  CHECK(spares.spare_records() == 0);
}

TEST_CASE("the spare records stay bounded in number and keep the larger buffers") {
  tcp::PeerQueues q;
  tcp::UnexpectedBuffers spares;
  std::vector<tcp::UnexpectedList::iterator> records;
  for (std::size_t i = 0; i <= tcp::UnexpectedBuffers::records; ++i) {
    records.push_back(spares.stash(q, header(1, i, i + 1)));
  }
  for (auto it : records) spares.release(q, it);
  CHECK(spares.spare_records() == tcp::UnexpectedBuffers::records);
  // The one-byte buffer (the smallest) is the one that went back to the system.
  std::set<std::size_t> capacities;
  for (std::size_t i = 0; i < tcp::UnexpectedBuffers::records; ++i) {
    capacities.insert(spares.stash(q, header(1, i, 1))->capacity);
  }
  CHECK(capacities.count(1) == 0);
  CHECK(capacities.size() == tcp::UnexpectedBuffers::records);
}

TEST_CASE("the frame reader finds every header and payload whatever the reads cut") {
  std::vector<std::byte> stream;
  std::vector<tcp::Header> sent;
  std::size_t payload_total = 0;
  for (std::uint64_t i = 0; i < 40; ++i) {
    // Empty, small, and payloads large enough to be read straight into their destination.
    const std::uint64_t bytes = (i % 3 == 0) ? 0 : (i % 3 == 1) ? i * 7 : 5000 + i * 1000;
    sent.push_back(header(i % 4, i, bytes));
    const auto f = frame(sent.back(), static_cast<std::byte>(i));
    stream.insert(stream.end(), f.begin(), f.end());
    payload_total += bytes;
  }
  for (std::size_t step : {std::size_t{1}, std::size_t{31}, std::size_t{33}, std::size_t{4096},
                           tcp::FrameReader::inbox_size, std::size_t{1} << 20}) {
    CAPTURE(step);
    tcp::FrameReader reader;
    std::vector<std::byte> payloads(payload_total, std::byte{0xEE});
    Feed feed{reader, {}, 0, payloads.data()};
    feed.push(stream, step);
    REQUIRE(feed.headers.size() == sent.size());
    CHECK(feed.ends == static_cast<int>(sent.size()));
    std::size_t at = 0;
    bool payloads_intact = true;
    for (std::size_t i = 0; i < sent.size(); ++i) {
      CHECK(feed.headers[i].tag == sent[i].tag);
      CHECK(feed.headers[i].context == sent[i].context);
      CHECK(feed.headers[i].bytes == sent[i].bytes);
      for (std::uint64_t b = 0; b < sent[i].bytes; ++b) {
        payloads_intact &= payloads[at++] == static_cast<std::byte>(i);
      }
    }
    CHECK(payloads_intact);
  }
}

TEST_CASE("a skipped payload is read and dropped, and the next header still found") {
  std::vector<std::byte> stream = frame(header(1, 1, 100), std::byte{1});
  const auto second = frame(header(1, 2, 0), std::byte{0});
  stream.insert(stream.end(), second.begin(), second.end());
  tcp::FrameReader reader;
  auto [into, room] = reader.next_read();
  std::memcpy(into, stream.data(), stream.size());
  bool drained = false;
  reader.took(into, stream.size(), room, drained);
  CHECK(drained);
  REQUIRE(reader.take_from_inbox() == tcp::FrameReader::Event::header);
  reader.expect(tcp::FrameReader::Part::skip, nullptr, 100);
  REQUIRE(reader.take_from_inbox() == tcp::FrameReader::Event::end);
  reader.next_header();
  REQUIRE(reader.take_from_inbox() == tcp::FrameReader::Event::header);
  CHECK(tcp::Header::decode(reader.header()).tag == 2);
  CHECK_FALSE(reader.has_inbox_bytes());
}

TEST_CASE("write_message resumes a message from any offset, in header and payload") {
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
  std::vector<std::byte> payload(1000);
  for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<std::byte>(i * 13);
  tcp::Bytes<tcp::Header::size> encoded{};
  header(3, 4, payload.size()).encode_into(encoded);
  std::vector<std::byte> expected(encoded.begin(), encoded.end());
  expected.insert(expected.end(), payload.begin(), payload.end());
  for (std::size_t offset : {std::size_t{0}, std::size_t{5}, tcp::Header::size, std::size_t{500}}) {
    CAPTURE(offset);
    int error = 0;
    const long wrote = tcp::write_message(fds[0], encoded, payload.data(), payload.size(), offset, error);
    REQUIRE(wrote == static_cast<long>(expected.size() - offset));
    std::vector<std::byte> got(expected.size() - offset);
    REQUIRE(::read(fds[1], got.data(), got.size()) == static_cast<long>(got.size()));
    CHECK(std::equal(got.begin(), got.end(), expected.begin() + static_cast<long>(offset)));
  }
  int error = 0;
  CHECK(tcp::write_message(fds[0], encoded, payload.data(), payload.size(), expected.size(), error) == 0);
  ::close(fds[1]);
  CHECK(tcp::write_message(fds[0], encoded, payload.data(), payload.size(), 0, error) == -1);
  CHECK(error == EPIPE);
  ::close(fds[0]);
}

TEST_CASE("the operation pool hands out distinct operations and takes them back") {
  tcp::OpPool pool;
  std::set<tcp::Op*> handed;
  for (int i = 0; i < 200; ++i) handed.insert(pool.allocate());
  CHECK(handed.size() == 200);
  CHECK(handed.count(nullptr) == 0);
  tcp::Op* back = *handed.begin();
  pool.recycle(back);
  CHECK(back->state.load() == tcp::Op::State::free);
  CHECK(pool.allocate() == back);
}
