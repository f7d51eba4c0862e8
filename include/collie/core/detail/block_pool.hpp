// A pool of objects handed out through a free list and allocated in blocks, so that steady
// traffic allocates nothing: what the transports' operation pools are made of.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

namespace collie::detail {

// Objects of type T (which has a `T* next_free` member, used while the object is free) in
// blocks of `Block`. Not thread-safe: its owner guards it.
template <class T, std::size_t Block = 64>
class BlockPool {
 public:
  // A free object, or null when memory runs out (the caller reports it). Not cleared: the
  // caller sets what it needs.
  T* allocate() noexcept {
    if (free_ == nullptr) {
      try {
        blocks_.push_back(std::make_unique<T[]>(Block));
      } catch (...) {
        return nullptr;
      }
      for (std::size_t i = 0; i < Block; ++i) {
        blocks_.back()[i].next_free = free_;
        free_ = &blocks_.back()[i];
      }
    }
    T* item = free_;
    free_ = item->next_free;
    return item;
  }

  void recycle(T* item) noexcept {
    item->next_free = free_;
    free_ = item;
  }

 private:
  std::vector<std::unique_ptr<T[]>> blocks_;
  T* free_ = nullptr;
};

}  // namespace collie::detail
