"""core/digest.pyx: SHA-256 and HMAC-SHA256 in C agree with hashlib and hmac."""

import hashlib
import hmac

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from core import digest


@pytest.fixture(params=["sha_ni", "portable"], autouse=True)
def implementation(request):
    """Both compressions: the CPU's SHA extensions and the portable code. On a CPU without the
    extensions, asking for them must leave the portable code in use (and the tests run on it)."""
    was = digest.SHA_NI
    usable = digest.tally_sha_ni_usable_for_tests()
    digest._set_sha_ni(request.param == "sha_ni")
    assert digest.SHA_NI == (request.param == "sha_ni" and usable)
    yield
    digest._set_sha_ni(was)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_sha256_matches_hashlib(data):
    assert digest.sha256_digest(data) == hashlib.sha256(data).digest()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.binary(max_size=130), data=st.binary(max_size=300))
def test_hmac_sha256_matches_the_standard_library(key, data):
    assert digest.hmac_sha256_digest(key, data) == hmac.new(key, data, hashlib.sha256).digest()


def test_block_boundaries():
    for size in (0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 129, 1000):
        data = bytes(range(256)) * 4
        assert digest.sha256_digest(data[:size]) == hashlib.sha256(data[:size]).digest()
