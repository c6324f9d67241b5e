"""The OCC core: pure PyTorch, shared by every backend (imports torch only)."""

from occctl.occ.calibration import Calibrator, CalibrationStats, proxy_sums, lambda_from_sums
from occctl.occ.objective import MtpObjective, mtp_objective
from occctl.occ.mtp_head import MtpHead, draft_acceptance, mtp_logits
from occctl.occ.regimes import REGIMES, MtpLossOutput, mtp_loss, policy_loss, token_logprobs

__all__ = [
    "REGIMES", "Calibrator", "CalibrationStats", "MtpHead", "MtpLossOutput", "MtpObjective", "draft_acceptance",
    "lambda_from_sums", "mtp_logits", "mtp_loss", "mtp_objective", "policy_loss", "proxy_sums", "token_logprobs",
]
