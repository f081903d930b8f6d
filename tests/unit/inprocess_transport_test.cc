// The in-process transport plus the map service against a byte model: random
// unaligned reads, writes, discards and flushes on chains of the fake engine
// (tests/unit/fake_image.h) in the shapes that stress the protocol: fresh
// clusters larger than the block over a finer backing image, subclusters
// finer than the block, compressed clusters.  Every read must equal the
// model, and so must the disk as a new transport (an empty extent cache) and
// the chain itself see it afterwards.
#include <gtest/gtest.h>

#include <random>

#include "formats/chain.h"
#include "mapper/inprocess_transport.h"
#include "tests/support/test_support.h"
#include "tests/unit/fake_image.h"

namespace dmu::mapper {
namespace {

using test::FakeImage;
constexpr uint64_t K = 1024;

struct Shape {
  const char* name;
  uint64_t size, top_cluster, top_granularity, base_cluster;
};

class TransportRig {
 public:
  explicit TransportRig(const Shape& shape) : shape_(shape) {
    std::vector<std::unique_ptr<formats::Image>> images;
    auto t = std::make_unique<FakeImage>(env_, "top", shape.size, shape.top_cluster,
                                         shape.top_granularity);
    top_ = t.get();
    images.push_back(std::move(t));
    model_.assign(shape.size, 0);
    if (shape.base_cluster) {
      auto b = std::make_unique<FakeImage>(env_, "base", shape.size, shape.base_cluster, 0, false);
      base_ = b.get();
      images.push_back(std::move(b));
    }
    seed_contents();
    chain_ = *formats::Chain::assemble(std::move(images), formats::Access::ReadWrite);
    const uint64_t block = choose_block_size(*chain_);
    service_ =
        *MapService::create(*chain_, *ScratchStore::create(env_, "scratch", 256 * K, block, false),
                            MapServiceOptions{});
    transport_ = std::make_unique<InprocessTransport>(*service_);
  }

  InprocessTransport& io() { return *transport_; }
  MapService& service() { return *service_; }
  formats::Chain& chain() { return *chain_; }
  std::vector<uint8_t>& model() { return model_; }
  uint64_t size() const { return shape_.size; }
  void restart_kernel() { transport_ = std::make_unique<InprocessTransport>(*service_); }

  // Discard semantics of the fake engine through a block-granular device:
  // whole blocks, then whole granules of the top image, read as zeros.
  void model_discard(uint64_t off, uint64_t len) {
    const uint64_t unit = std::max(service_->block_size(), top_->info().granularity);
    const uint64_t first = (off + unit - 1) / unit * unit;
    uint64_t last = (off + len) / unit * unit;
    if (off + len == shape_.size) last = off + len;
    for (uint64_t p = first; p < last; ++p) model_[p] = 0;
  }

 private:
  // Backing data, zero and compressed clusters, and a few top clusters.
  void seed_contents() {
    std::mt19937 rng(42);
    auto put = [&](FakeImage* img, uint64_t cluster, int kinds) {
      for (uint64_t off = 0; off < shape_.size; off += cluster) {
        const int k = int(rng() % kinds);
        const uint64_t n = std::min(cluster, shape_.size - off);
        auto bytes = test::random_bytes(n, uint32_t(rng()));
        if (k == 0) {
          img->put_data(off, bytes);
        } else if (k == 1) {
          img->put_compressed(off, bytes);
        } else if (k == 2) {
          img->put_zero(off, n);
          std::fill(model_.begin() + off, model_.begin() + off + n, 0);
          continue;
        } else {
          continue;  // unallocated
        }
        std::copy(bytes.begin(), bytes.end(), model_.begin() + off);
      }
    };
    if (base_) put(base_, base_->info().granularity, 4);
    // Top: granules over the base in the model (applied after the base).
    put(top_, top_->info().granularity, 6);
  }

  Shape shape_;
  MemEnv env_;
  FakeImage* top_ = nullptr;
  FakeImage* base_ = nullptr;
  std::vector<uint8_t> model_;
  std::unique_ptr<formats::Chain> chain_;
  std::unique_ptr<MapService> service_;
  std::unique_ptr<InprocessTransport> transport_;
};

class InprocessTransportRandom : public ::testing::TestWithParam<Shape> {};

TEST_P(InprocessTransportRandom, ReadsEqualTheModelAfterRandomUnalignedIo) {
  TransportRig rig(GetParam());
  std::mt19937 rng(7);
  const uint64_t size = rig.size();
  for (int op = 0; op < 400; ++op) {
    const uint64_t off = rng() % size;
    const uint64_t len = 1 + rng() % std::min<uint64_t>(size - off, 150 * K);
    switch (rng() % 8) {
      case 0:
      case 1:
      case 2: {
        std::vector<uint8_t> got(len);
        auto r = rig.io().read(off, got);
        ASSERT_TRUE(r) << r.error().message;
        auto diff = std::mismatch(got.begin(), got.end(), rig.model().begin() + off);
        ASSERT_TRUE(diff.first == got.end())
            << "op " << op << " read at " << off << "+" << len << ": first difference at "
            << off + uint64_t(diff.first - got.begin());
        break;
      }
      case 3:
      case 4:
      case 5: {
        auto bytes = test::random_bytes(len, uint32_t(rng()));
        auto w = rig.io().write(off, bytes);
        ASSERT_TRUE(w) << w.error().message;
        std::copy(bytes.begin(), bytes.end(), rig.model().begin() + off);
        break;
      }
      case 6: {
        auto d = rig.io().discard(off, len);
        ASSERT_TRUE(d) << d.error().message;
        rig.model_discard(off, len);
        break;
      }
      default:
        ASSERT_TRUE(rig.io().flush());
    }
  }
  EXPECT_EQ(rig.service().pending_writes(), 0u);
  rig.restart_kernel();
  std::vector<uint8_t> all(size);
  ASSERT_TRUE(rig.io().read(0, all));
  EXPECT_TRUE(all == rig.model()) << "through a fresh extent cache";
  std::vector<uint8_t> direct(size);
  ASSERT_TRUE(rig.chain().read(0, direct));
  EXPECT_TRUE(direct == rig.model()) << "through the chain";
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, InprocessTransportRandom,
    ::testing::Values(Shape{"Clusters64KOverBase4K", 2 << 20, 64 * K, 0, 4 * K},
                      Shape{"Subclusters2KOverBase64K", 2 << 20, 64 * K, 2 * K, 64 * K},
                      Shape{"SingleImage64KUnalignedSize", (2 << 20) - 3 * 512, 64 * K, 0, 0},
                      Shape{"Clusters4KOverBase64K", 1 << 20, 4 * K, 0, 64 * K}),
    [](const auto& p) { return std::string(p.param.name); });

TEST(InprocessTransport, CachedWritableExtentsSkipTheService) {
  TransportRig rig(Shape{"x", 1 << 20, 64 * K, 0, 0});
  auto bytes = test::random_bytes(64 * K, 1);
  ASSERT_TRUE(rig.io().write(0, bytes));
  const uint64_t requests = rig.io().stats().requests;
  ASSERT_TRUE(rig.io().write(100, std::span(bytes).first(1000)));
  EXPECT_EQ(rig.io().stats().requests, requests);
}

TEST(InprocessTransport, FlushCommitsOnlyAfterDone) {
  TransportRig rig(Shape{"x", 1 << 20, 64 * K, 0, 0});
  ASSERT_TRUE(rig.io().write(3 * 64 * K + 5, test::random_bytes(10, 1)));
  EXPECT_EQ(rig.service().pending_writes(), 0u);  // DONE came with the write
  ASSERT_TRUE(rig.io().flush());
}

TEST(InprocessTransport, OutOfRangeIoFailsNamingTheImage) {
  TransportRig rig(Shape{"x", 1 << 20, 64 * K, 0, 0});
  std::vector<uint8_t> b(10);
  auto r = rig.io().read((1 << 20) - 5, b);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EINVAL);
  EXPECT_NE(r.error().message.find("top"), std::string::npos);
}

}  // namespace
}  // namespace dmu::mapper
