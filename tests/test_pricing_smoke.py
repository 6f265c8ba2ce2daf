from decimal import Decimal

from pricing import quote


def test_flux_dev_landscape_4_3_is_0_79_megapixels_at_0_015():
    q = quote("fal-ai/flux/dev", {})
    assert q.amount == Decimal("0.01185")
    assert q.price == "$0.012"
