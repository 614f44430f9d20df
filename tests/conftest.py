import os

import torch

# The tests run many tiny torch computations; on a 2-core machine shared with
# parallel workers, torch's intra-op thread pool only adds contention.
torch.set_num_threads(1)

IN_CI = os.environ.get("CI", "").lower() == "true"
