import numpy as np
import pytest

from shards.schema import Geometry
from shards.synthetic import synthetic_sample

RESOLUTIONS = [(512, 512), (512, 352), (256, 176)]


@pytest.fixture(params=RESOLUTIONS, ids=lambda r: f"{r[0]}x{r[1]}")
def geometry(request) -> Geometry:
    height, width = request.param
    return Geometry(height=height, width=width, clip_dim=768)


def make_samples(geometry: Geometry, count: int, *, seed: int = 0, previews: bool = True) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        synthetic_sample(rng, geometry=geometry, source_id=f"src-{i}", target_id=f"tgt_{i}",
                         face_ok=i % 3 != 0, previews=previews)
        for i in range(count)
    ]
