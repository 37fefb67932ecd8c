"""kdlab: a knowledge-distillation research toolkit.

Intra-class contrastive teachers (arXiv 2509.22053), classic and contrastive distillers
(KD, RKD, FitNet, AT, SP, PKT, DKD, CRD, CoCoRD) and an AblationBench plan runner.
"""

import os

# PyTorch's CPU threads (libgomp) spin while they wait for each other by default. When other processes keep the
# cores busy, a spinning thread burns the time slice its partner needs: a 2-thread demo on a 2-core machine running
# a study took 10x as long (benchmarks/BENCHMARKS.md, section 4). Waiting threads sleep instead, unless the user
# chose a policy; this must be set before torch is first imported (importing kdlab first does it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
