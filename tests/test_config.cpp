#include <doctest/doctest.h>

#include <gemma3/core/configs.hpp>

using namespace gemma3;

TEST_CASE("the seed's attention pattern has full layers at 6, 12 and 18") {
    using D = Dims<configs::Gemma3_270M>;
    for (int l = 0; l < D::layers; ++l) {
        const bool full = (l + 1) % 6 == 0;
        CHECK((D::kind(l) == AttentionKind::full) == full);
        CHECK(D::rope_theta(l) == (full ? 1e6 : 1e4));
    }
    CHECK(D::count(AttentionKind::full) == 3);
    CHECK(D::q == 1024);
    CHECK(D::kv == 256);
}
