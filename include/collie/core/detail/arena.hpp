// Per-call working memory: a stack of bytes handed out during one collective call and forgotten
// when the next one starts. It grows to the largest call seen and is then reused, so steady-state
// calls allocate nothing for their request lists, id tables and pointer arrays.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

namespace collie::detail {

class Arena {
 public:
  /// `bytes` bytes aligned to `align` (a power of two, at most alignof(std::max_align_t)),
  /// valid until the next `reset`. Contents are unspecified. Throws std::bad_alloc.
  void* allocate(std::size_t bytes, std::size_t align) {
    const std::size_t at = (used_ + align - 1) & ~(align - 1);
    if (at + bytes <= capacity_) {
      used_ = at + bytes;
      return block_.get() + at;
    }
    // Does not fit: a block of its own for now, folded into the main block at the next reset,
    // so that the same call made again fits without allocating.
    // (new[] of bytes is aligned for any fundamental type, hence for `align`.)
    spilled_.push_back(std::unique_ptr<std::byte[]>(new std::byte[bytes + align]));
    spilled_bytes_ += bytes + align;
    return spilled_.back().get();
  }

  /// Forgets everything handed out. If the last call spilled, the main block grows to hold all
  /// of it (the only allocation after warm-up, and only when a call needs more than before).
  void reset() {
    if (!spilled_.empty()) {
      const std::size_t needed = used_ + spilled_bytes_;
      spilled_.clear();
      spilled_bytes_ = 0;
      block_.reset();
      capacity_ = 0;
      block_.reset(new std::byte[needed]);
      capacity_ = needed;
    }
    used_ = 0;
  }

  std::size_t capacity() const noexcept { return capacity_; }

 private:
  std::unique_ptr<std::byte[]> block_;
  std::size_t capacity_ = 0;
  std::size_t used_ = 0;
  std::vector<std::unique_ptr<std::byte[]>> spilled_;
  std::size_t spilled_bytes_ = 0;
};

}  // namespace collie::detail
