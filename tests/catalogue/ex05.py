"""Exercise 5, noisy preferences: mistakes students make, and correct variants."""

EXERCISE = "ex05_noisy_but_valuable_preferences"

DEPENDS = {
    "ex05_rule": ["ex05_rule_tests"],
    "ex05_edge": ["ex05_edge_tests"],
    "ex05_metric": ["ex05_metric_tests"],
}

_CDPO = '''
def cdpo_loss(h, beta, eps):
    if BETA_CHECK:
        raise ValueError("beta must be positive")
    if EPS_CHECK:
        raise ValueError("eps out of range")
    z = beta * np.asarray(h, dtype=float)
    return LOSS
'''


def _cdpo(beta="not beta > 0", eps="not 0 <= eps < 0.5", loss="(1 - eps) * np.logaddexp(0.0, -z) + eps * np.logaddexp(0.0, z)"):
    return _CDPO.replace("BETA_CHECK", beta).replace("EPS_CHECK", eps).replace("LOSS", loss)


_FLAG = '''
def flag_contested(votes_a, n_votes, min_agreement=0.7):
    a = np.asarray(votes_a, dtype=float)
    n = np.asarray(n_votes, dtype=float)
    CHECKS
    out = []
    for k in range(a.size):
        if COND:
            out.append(k)
    return out
'''
_CHECKS = '''if a.shape != n.shape:
        raise ValueError("lengths differ")
    if (a < 0).any() or (a > n).any():
        raise ValueError("bad vote counts")'''


def _flag(checks=_CHECKS, cond="n[k] == 0 or max(a[k], n[k] - a[k]) / n[k] < min_agreement"):
    return _FLAG.replace("CHECKS", checks).replace("COND", cond)


_BAYES = '''
def bayes_ceiling(p):
    p = np.asarray(p, dtype=float)
    CHECKS
    return RESULT
'''


def _bayes(checks='''if p.size == 0:
        raise ValueError("no pairs")
    if (p < 0).any() or (p > 1).any() or np.isnan(p).any():
        raise ValueError("not probabilities")''', result="float(np.mean(np.maximum(p, 1 - p)))"):
    return _BAYES.replace("CHECKS", checks).replace("RESULT", result)


ENTRIES = [
    # ------------------------------------------------------------ cdpo_loss
    dict(cell="ex05_rule", kind="mistake", name="eps and 1 - eps swapped", source=_cdpo(loss="eps * np.logaddexp(0.0, -z) + (1 - eps) * np.logaddexp(0.0, z)")),
    dict(cell="ex05_rule", kind="mistake", name="log(sigmoid(z)) computed directly: overflows at large margins", source=_cdpo(loss='''-(1 - eps) * np.log(1 / (1 + np.exp(-z))) - eps * np.log(1 / (1 + np.exp(z)))''')),
    dict(cell="ex05_rule", kind="mistake", name="eps = 0.5 allowed (<=)", source=_cdpo(eps="not 0 <= eps <= 0.5")),
    dict(cell="ex05_rule", kind="mistake", name="no check on beta", source=_cdpo(beta="False")),
    dict(cell="ex05_rule", kind="mistake", name="smooths towards log 2 instead: (1 - eps) * DPO + eps * log 2", source=_cdpo(loss="(1 - eps) * np.logaddexp(0.0, -z) + eps * np.log(2.0)")),
    dict(cell="ex05_rule", kind="correct", name="torch logsigmoid on a float32 copy of h, returned as numpy", tags=("torch", "float32"), source='''
import torch
import torch.nn.functional as F

def cdpo_loss(h, beta, eps):
    if not beta > 0:
        raise ValueError("beta must be > 0")
    if not (0 <= eps < 0.5):
        raise ValueError("eps must be in [0, 0.5)")
    z = beta * torch.as_tensor(np.asarray(h, dtype=np.float64))
    return (-(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)).numpy()
'''),
    # ------------------------------------------------------------ flag_contested
    dict(cell="ex05_edge", kind="mistake", name="<= min_agreement: a share exactly at it is flagged", source=_flag(cond="n[k] == 0 or max(a[k], n[k] - a[k]) / n[k] <= min_agreement")),
    dict(cell="ex05_edge", kind="mistake", name="items with no votes are not flagged", source=_flag(cond="n[k] > 0 and max(a[k], n[k] - a[k]) / n[k] < min_agreement")),
    dict(cell="ex05_edge", kind="mistake", name="the share of votes for a, not the majority share", source=_flag(cond="n[k] == 0 or a[k] / n[k] < min_agreement")),
    dict(cell="ex05_edge", kind="mistake", name="no validation of the vote counts", source=_flag(checks="pass")),
    dict(cell="ex05_edge", kind="mistake", name="returns a numpy array", source='''
def flag_contested(votes_a, n_votes, min_agreement=0.7):
    a = np.asarray(votes_a, dtype=float)
    n = np.asarray(n_votes, dtype=float)
    if a.shape != n.shape:
        raise ValueError("lengths differ")
    if (a < 0).any() or (a > n).any():
        raise ValueError("bad vote counts")
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.maximum(a, n - a) / n
    return np.flatnonzero((n == 0) | (share < min_agreement))
'''),
    dict(cell="ex05_edge", kind="correct", name="vectorized, converted to a list", tags=("vectorized", "numpy"), source='''
def flag_contested(votes_a, n_votes, min_agreement=0.7):
    a = np.asarray(votes_a, dtype=float).reshape(-1)
    n = np.asarray(n_votes, dtype=float).reshape(-1)
    if a.shape != n.shape:
        raise ValueError("votes_a and n_votes must have one length")
    if ((a < 0) | (a > n)).any():
        raise ValueError("each vote count must lie between 0 and its total")
    share = np.divide(np.maximum(a, n - a), n, out=np.zeros_like(n), where=n > 0)
    return np.flatnonzero((n == 0) | (share < min_agreement)).tolist()
'''),
    # ------------------------------------------------------------ bayes_ceiling
    dict(cell="ex05_metric", kind="mistake", name="the mean of p, not of max(p, 1 - p)", source=_bayes(result="float(np.mean(p))")),
    dict(cell="ex05_metric", kind="mistake", name="nan slips through the range checks", source=_bayes(checks='''if p.size == 0:
        raise ValueError("no pairs")
    if (p < 0).any() or (p > 1).any():
        raise ValueError("not probabilities")''')),
    dict(cell="ex05_metric", kind="mistake", name="no check for an empty set (nan)", source=_bayes(checks='''if (p < 0).any() or (p > 1).any() or np.isnan(p).any():
        raise ValueError("not probabilities")''', result="float(np.mean(np.maximum(p, 1 - p))) if p.size else float('nan')")),
    dict(cell="ex05_metric", kind="mistake", name="only checks p <= 1", source=_bayes(checks='''if p.size == 0:
        raise ValueError("no pairs")
    if (p > 1).any() or np.isnan(p).any():
        raise ValueError("not probabilities")''')),
    dict(cell="ex05_metric", kind="mistake", name="rounds each pair to its majority label first (accuracy of 1)", source=_bayes(result="float(np.mean(np.where(p != 0.5, 1.0, 0.5)))")),
    dict(cell="ex05_metric", kind="correct", name="0.5 + mean |p - 0.5|, a loop", tags=("loops",), source='''
def bayes_ceiling(p):
    vals = [float(x) for x in np.ravel(p)]
    if not vals:
        raise ValueError("no pairs")
    if any(not (0.0 <= x <= 1.0) for x in vals):
        raise ValueError("every value must be a probability in [0, 1]")
    return 0.5 + sum(abs(x - 0.5) for x in vals) / len(vals)
'''),
]
