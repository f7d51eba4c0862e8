// A translation unit that calls every collective of collie::Group once, in its throwing,
// error-code and asynchronous forms, for bench/compile_time.py. It is also a program: run on
// any number of ranks (scripts/run_local.sh 4 ...), it checks each result and prints
// "rank R of N: every collective ok".
#include <collie/collie.hpp>

#include <cstdio>
#include <string>
#include <system_error>
#include <vector>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "wrong result: %s\n", what);
    ++failures;
  }
}

}  // namespace

int main() {
  try {
    collie::Group world = collie::init();
    const int p = world.size();
    const int r = world.rank();
    const auto n = static_cast<std::size_t>(p);

    std::vector<float> x(8, 1.0f);
    world.all_sum(x);
    expect(x[7] == static_cast<float>(p), "all_sum");

    std::vector<int> v(4, r + 1), out(4);
    world.all_max(v, out);
    expect(out[0] == p, "all_max");
    world.all_min(v, out);
    expect(out[0] == 1, "all_min");
    std::vector<double> one(3, 2.0);
    world.all_prod(one);
    expect(one[0] == static_cast<double>(1 << p), "all_prod");

    std::vector<int> mine(2, r), all(2 * n);
    world.all_gather(mine, all);
    expect(all[2 * n - 1] == p - 1, "all_gather");

    std::vector<float> big(2 * n, 1.0f), part(2);
    world.sum_scatter(big, part);
    expect(part[1] == static_cast<float>(p), "sum_scatter");

    std::vector<int> root(5, r == 0 ? 42 : 0);
    world.broadcast(root, 0);
    expect(root[4] == 42, "broadcast");

    std::vector<int> send(n, r), recv(n);
    world.all_to_all(send, recv);
    expect(recv[n - 1] == p - 1, "all_to_all");

    world.barrier();

    if (p > 1) {
      std::vector<int> token(3, 7);
      if (r == 0) world.send(token, 1);
      if (r == 1) {
        world.recv(token, 0);
        expect(token[2] == 7, "send/recv");
      }
    }

    std::error_code ec;
    std::vector<std::int64_t> counts(2, 1);
    world.all_sum(counts, ec);
    expect(!ec && counts[0] == p, "all_sum (error_code form)");

    std::vector<float> overlap(1 << 10, 1.0f);
    collie::Request pending = world.all_sum_async(overlap);
    pending.wait();
    expect(overlap[0] == static_cast<float>(p), "all_sum_async");

    std::vector<std::vector<float>> grads(5, std::vector<float>(3, 1.0f));
    world.all_sum_fused(grads);
    expect(grads[4][2] == static_cast<float>(p), "all_sum_fused");

    collie::Group half = world.split(r % 2);
    std::vector<int> ones(1, 1);
    half.all_sum(ones);
    expect(ones[0] == half.size(), "split");

    if (failures == 0) std::printf("rank %d of %d: every collective ok\n", r, p);
  } catch (const collie::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return failures == 0 ? 0 : 1;
}
