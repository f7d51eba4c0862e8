// The reference translation unit of bench/compile_time.py: the two libraries collie's TCP backend
// and hostfile reader are built on, and nothing else. A collie program's translation unit is
// measured as a ratio of this one.
#include <asio.hpp>
#include <nlohmann/json.hpp>

int main() { return 0; }
