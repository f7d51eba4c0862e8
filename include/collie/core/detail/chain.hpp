// A queue linked through its elements (each element carries `chain_prev` and `chain_next`): the
// transports keep posted operations in such queues, so queueing one allocates nothing. An element
// is in at most one chain at a time.
#pragma once

namespace collie::detail {

template <class T>
class Chain {
 public:
  bool empty() const noexcept { return head_ == nullptr; }
  T* front() const noexcept { return head_; }

  void push_back(T* item) noexcept {
    item->chain_prev = tail_;
    item->chain_next = nullptr;
    (tail_ != nullptr ? tail_->chain_next : head_) = item;
    tail_ = item;
  }

  T* pop_front() noexcept {
    T* item = head_;
    if (item != nullptr) erase(item);
    return item;
  }

  // `item` must be in this chain.
  void erase(T* item) noexcept {
    (item->chain_prev != nullptr ? item->chain_prev->chain_next : head_) = item->chain_next;
    (item->chain_next != nullptr ? item->chain_next->chain_prev : tail_) = item->chain_prev;
    item->chain_prev = item->chain_next = nullptr;
  }

  // Whether `item` is in this chain (a walk: for rare paths such as a cancel).
  bool contains(const T* item) const noexcept {
    for (const T* at = head_; at != nullptr; at = at->chain_next) {
      if (at == item) return true;
    }
    return false;
  }

  // The first element for which `match` holds, or null.
  template <class Match>
  T* find(Match&& match) const noexcept {
    for (T* at = head_; at != nullptr; at = at->chain_next) {
      if (match(*at)) return at;
    }
    return nullptr;
  }

  // Removes every element, calling `f` on each in order.
  template <class F>
  void drain(F&& f) noexcept {
    while (T* item = pop_front()) f(*item);
  }

 private:
  T* head_ = nullptr;
  T* tail_ = nullptr;
};

}  // namespace collie::detail
