"""Exercise 8, Bradley-Terry: mistakes students make, and correct variants."""

EXERCISE = "ex08_the_bradley_terry_model"

DEPENDS = {
    "ex08_rule": ["ex08_rule_tests"],
    "ex08_edge": ["ex08_edge_tests"],
    "ex08_metric": ["ex08_metric_tests"],
    "ex08_model": ["ex08_model_tests"],
}

_GD = '''
def fit_bt_gd(n_items, pairs, steps=1000, lr=1.0):
    if len(pairs) == 0:
        raise ValueError("no comparisons")
    idx = torch.as_tensor(np.asarray(pairs, dtype=np.int64).reshape(-1, 2))
    if bool((idx < 0).any()) or bool((idx >= n_items).any()):
        raise ValueError("index out of range")
    s = INIT
    opt = torch.optim.SGD([s], lr=lr)
    for _ in range(STEPS):
        loss = torch.nn.functional.softplus(-(s[idx[:, W]] - s[idx[:, L]])).REDUCE()
        opt.zero_grad()
        (SIGN * loss).backward()
        opt.step()
    return RESULT
'''


def _gd(init="torch.zeros(n_items, dtype=torch.float64, requires_grad=True)", steps="steps", w="0", l="1",
        reduce="mean", sign="1.0", result="(s - s.mean()).detach()"):
    return (_GD.replace("INIT", init).replace("STEPS", steps).replace("idx[:, W]", f"idx[:, {w}]")
            .replace("idx[:, L]", f"idx[:, {l}]").replace("REDUCE", reduce).replace("SIGN", sign).replace("RESULT", result))


ENTRIES = [
    # ------------------------------------------------------------ bt_prob
    dict(cell="ex08_rule", kind="mistake", name="1 / (1 + exp(-d)): right values, overflow warning", source='''
def bt_prob(s_a, s_b):
    d = np.asarray(s_a, dtype=float) - np.asarray(s_b, dtype=float)
    return 1.0 / (1.0 + np.exp(-d))
'''),
    dict(cell="ex08_rule", kind="mistake", name="exp(a) / (exp(a) + exp(b)): inf / inf = nan", source='''
def bt_prob(s_a, s_b):
    a, b = np.asarray(s_a, dtype=float), np.asarray(s_b, dtype=float)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.exp(a) / (np.exp(a) + np.exp(b))
'''),
    dict(cell="ex08_rule", kind="mistake", name="sigma(s_b - s_a): the wrong way round", source='''
def bt_prob(s_a, s_b):
    d = np.asarray(s_b, dtype=float) - np.asarray(s_a, dtype=float)
    return np.exp(-np.logaddexp(0.0, -d))
'''),
    dict(cell="ex08_rule", kind="mistake", name="clips the difference at +-30 (0 becomes 9e-14, but sums still 1)", source='''
def bt_prob(s_a, s_b):
    d = np.clip(np.asarray(s_a, dtype=float) - np.asarray(s_b, dtype=float), -30, 30)
    return 1.0 / (1.0 + np.exp(-d))
'''),
    dict(cell="ex08_rule", kind="mistake", name="returns a Python list", source='''
def bt_prob(s_a, s_b):
    d = np.atleast_1d(np.asarray(s_a, dtype=float) - np.asarray(s_b, dtype=float))
    return [float(np.exp(-np.logaddexp(0.0, -x))) for x in d]
'''),
    dict(cell="ex08_rule", kind="correct", name="torch.sigmoid in float64, back to numpy", tags=("torch",), source='''
def bt_prob(s_a, s_b):
    d = torch.as_tensor(np.asarray(s_a, dtype=np.float64) - np.asarray(s_b, dtype=np.float64))
    return torch.sigmoid(d).numpy()
'''),
    # ------------------------------------------------------------ is_cycle
    dict(cell="ex08_edge", kind="mistake", name=">= 0.5: a tie still counts as a cycle", source='''
def is_cycle(p_ab, p_bc, p_ca):
    ps = [p_ab, p_bc, p_ca]
    if any(p < 0 or p > 1 for p in ps):
        raise ValueError("not a probability")
    return all(p >= 0.5 for p in ps) or all(p <= 0.5 for p in ps)
'''),
    dict(cell="ex08_edge", kind="mistake", name="only the A > B > C > A direction", source='''
def is_cycle(p_ab, p_bc, p_ca):
    ps = [p_ab, p_bc, p_ca]
    if any(p < 0 or p > 1 for p in ps):
        raise ValueError("not a probability")
    return all(p > 0.5 for p in ps)
'''),
    dict(cell="ex08_edge", kind="mistake", name="no range check", source='''
def is_cycle(p_ab, p_bc, p_ca):
    ps = [p_ab, p_bc, p_ca]
    return all(p > 0.5 for p in ps) or all(p < 0.5 for p in ps)
'''),
    dict(cell="ex08_edge", kind="mistake", name="reads p_ca as P(A > C)", source='''
def is_cycle(p_ab, p_bc, p_ca):
    ps = [p_ab, p_bc, 1.0 - p_ca]
    if any(p < 0 or p > 1 for p in ps):
        raise ValueError("not a probability")
    return all(p > 0.5 for p in ps) or all(p < 0.5 for p in ps)
'''),
    dict(cell="ex08_edge", kind="correct", name="signs of p - 1/2", tags=("vectorized",), source='''
def is_cycle(p_ab, p_bc, p_ca):
    ps = np.array([p_ab, p_bc, p_ca], dtype=float)
    if not ((ps >= 0) & (ps <= 1)).all():
        raise ValueError("probabilities must lie in [0, 1]")
    signs = np.sign(ps - 0.5)
    return bool(abs(signs.sum()) == 3)
'''),
    # ------------------------------------------------------------ bt_nll
    dict(cell="ex08_metric", kind="mistake", name="log(1 + exp(-d)) overflows at large gaps", source='''
def bt_nll(scores, pairs):
    s = np.asarray(scores, dtype=float)
    if len(pairs) == 0:
        raise ValueError("no pairs")
    idx = np.asarray(pairs, dtype=int)
    if (idx < 0).any() or (idx >= s.size).any():
        raise ValueError("index out of range")
    with np.errstate(over="ignore"):
        return float(np.mean(np.log(1.0 + np.exp(-(s[idx[:, 0]] - s[idx[:, 1]])))))
'''),
    dict(cell="ex08_metric", kind="mistake", name="sums instead of averaging", source='''
def bt_nll(scores, pairs):
    s = np.asarray(scores, dtype=float)
    if len(pairs) == 0:
        raise ValueError("no pairs")
    idx = np.asarray(pairs, dtype=int)
    if (idx < 0).any() or (idx >= s.size).any():
        raise ValueError("index out of range")
    return float(np.sum(np.logaddexp(0.0, -(s[idx[:, 0]] - s[idx[:, 1]]))))
'''),
    dict(cell="ex08_metric", kind="mistake", name="loser first: -log sigma(s_l - s_w)", source='''
def bt_nll(scores, pairs):
    s = np.asarray(scores, dtype=float)
    if len(pairs) == 0:
        raise ValueError("no pairs")
    idx = np.asarray(pairs, dtype=int)
    if (idx < 0).any() or (idx >= s.size).any():
        raise ValueError("index out of range")
    return float(np.mean(np.logaddexp(0.0, -(s[idx[:, 1]] - s[idx[:, 0]]))))
'''),
    dict(cell="ex08_metric", kind="mistake", name="negative indices wrap around silently", source='''
def bt_nll(scores, pairs):
    s = np.asarray(scores, dtype=float)
    if len(pairs) == 0:
        raise ValueError("no pairs")
    idx = np.asarray(pairs, dtype=int)
    if (idx >= s.size).any():
        raise ValueError("index out of range")
    return float(np.mean(np.logaddexp(0.0, -(s[idx[:, 0]] - s[idx[:, 1]]))))
'''),
    dict(cell="ex08_metric", kind="mistake", name="an IndexError instead of a ValueError past the end", source='''
def bt_nll(scores, pairs):
    s = np.asarray(scores, dtype=float)
    if len(pairs) == 0:
        raise ValueError("no pairs")
    idx = np.asarray(pairs, dtype=int)
    if (idx < 0).any():
        raise ValueError("negative index")
    return float(np.mean(np.logaddexp(0.0, -(s[idx[:, 0]] - s[idx[:, 1]]))))
'''),
    dict(cell="ex08_metric", kind="correct", name="a loop over comparisons with a stable softplus", tags=("loops",), source='''
def bt_nll(scores, pairs):
    s = [float(x) for x in np.ravel(scores)]
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no comparisons")
    total = 0.0
    for w, l in pairs:
        if not (0 <= w < len(s) and 0 <= l < len(s)):
            raise ValueError(f"pair ({w}, {l}) names an item outside 0..{len(s) - 1}")
        x = -(s[w] - s[l])
        total += x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))
    return total / len(pairs)
'''),
    # ------------------------------------------------------------ fit_bt_gd
    dict(cell="ex08_model", kind="mistake", name="gradient ascent on the NLL (sign flipped)", source=_gd(sign="-1.0")),
    dict(cell="ex08_model", kind="mistake", name="summed loss at lr 1: the steps are 400 times too large", source=_gd(reduce="sum")),
    dict(cell="ex08_model", kind="mistake", name="winner and loser swapped: the scores come out negated", source=_gd(w="1", l="0")),
    dict(cell="ex08_model", kind="mistake", name="random start and no centring", source=_gd(
        init="torch.randn(n_items, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)",
        result="s.detach()")),
    dict(cell="ex08_model", kind="mistake", name="stops after 100 steps whatever steps says", source=_gd(steps="min(steps, 100)")),
    dict(cell="ex08_model", kind="correct", name="the gradient by hand in numpy (float32), a warning on stderr", tags=("numpy", "float32", "stderr"), source='''
import warnings

def fit_bt_gd(n_items, pairs, steps=1000, lr=1.0):
    idx = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if idx.shape[0] == 0:
        raise ValueError("no comparisons")
    if idx.min() < 0 or idx.max() >= n_items:
        raise ValueError("an index outside the items")
    w, l = idx[:, 0], idx[:, 1]
    s = np.zeros(n_items, dtype=np.float32)
    m = np.float32(len(idx))
    for _ in range(steps):
        z = np.float32(1.0) / (np.float32(1.0) + np.exp(s[w] - s[l]))      # sigma(-(s_w - s_l))
        g = (np.bincount(l, weights=z, minlength=n_items) - np.bincount(w, weights=z, minlength=n_items)) / m
        s = s - np.float32(lr) * g.astype(np.float32)
    warnings.warn("fit_bt_gd: computed in float32")
    return (s - s.mean()).astype(np.float32)
'''),
]
