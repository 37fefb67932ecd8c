"""kdlab: a knowledge-distillation research toolkit.

Intra-class contrastive teachers (arXiv 2509.22053), classic and contrastive distillers
(KD, RKD, FitNet, AT, SP, PKT, DKD, CRD, CoCoRD) and an AblationBench plan runner.
"""

__version__ = "0.1.0"
