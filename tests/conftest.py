import os

import pytest
import torch

# The tests run many tiny torch computations; on a 2-core machine shared with
# parallel workers, torch's intra-op thread pool only adds contention.
torch.set_num_threads(1)

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def dask_client():
    """One real dask cluster on 127.0.0.1 (2 worker processes) for the whole session.

    A test that kills a worker waits until the nanny has restarted it, so the
    next test finds two workers again.
    """
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()
