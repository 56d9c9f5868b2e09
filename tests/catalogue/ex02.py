"""Exercise 2, reward models as proxies: mistakes students make, and correct variants."""

EXERCISE = "ex02_reward_models_as_proxies"

DEPENDS = {
    "ex02_rule": ["ex02_rule_tests"],
    "ex02_edge": ["ex02_edge_tests"],
    "ex02_metric": ["ex02_metric_tests"],
}

_BON = '''
def best_of_n_gold(proxy, gold):
    p = np.asarray(proxy, dtype=float)
    g = np.asarray(gold, dtype=float)
    if CHECK:
        raise ValueError("bad shapes")
    return RESULT
'''


def _bon(check="p.ndim != 2 or p.shape != g.shape or p.shape[1] == 0", result="g[np.arange(p.shape[0]), np.argmax(p, axis=1)]"):
    return _BON.replace("CHECK", check).replace("RESULT", result)


_OVER = '''
def overoptimized(proxy_curve, gold_curve, tol=0.0):
    p = np.asarray(proxy_curve, dtype=float)
    g = np.asarray(gold_curve, dtype=float)
    if p.shape != g.shape or p.size < 2:
        raise ValueError("bad curves")
    return bool(COND)
'''


def _over(cond="p[-1] >= p.max() and g.max() - g[-1] > tol"):
    return _OVER.replace("COND", cond)


_PEARSON = '''
def pearson(x, y):
    a = np.asarray(x, dtype=float)
    b = np.asarray(y, dtype=float)
    if CHECK:
        raise ValueError("bad input")
    BODY
'''


def _pearson(check="a.shape != b.shape or a.size < 2", body='''a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    if den == 0:
        raise ValueError("zero variance")
    return float((a * b).sum() / den)'''):
    return _PEARSON.replace("CHECK", check).replace("BODY", body)


ENTRIES = [
    # ------------------------------------------------------------ best_of_n_gold
    dict(cell="ex02_rule", kind="mistake", name="picks by gold, not by the proxy", source=_bon(result="g.max(axis=1)")),
    dict(cell="ex02_rule", kind="mistake", name="returns the proxy's score of the pick", source=_bon(result="p.max(axis=1)")),
    dict(cell="ex02_rule", kind="mistake", name="ties go to the last candidate", source=_bon(
        result="g[np.arange(p.shape[0]), p.shape[1] - 1 - np.argmax(p[:, ::-1], axis=1)]")),
    dict(cell="ex02_rule", kind="mistake", name="no shape check (gold of another shape is indexed anyway)", source=_bon(check="p.ndim != 2 or p.shape[1] == 0")),
    dict(cell="ex02_rule", kind="mistake", name="sorts the caller's proxy array in place to find the best", source='''
def best_of_n_gold(proxy, gold):
    p = np.asarray(proxy, dtype=float)
    g = np.asarray(gold, dtype=float)
    if p.ndim != 2 or p.shape != g.shape or p.shape[1] == 0:
        raise ValueError("bad shapes")
    pick = np.argmax(p, axis=1)
    out = g[np.arange(p.shape[0]), pick]
    p.sort(axis=1)
    return out
'''),
    dict(cell="ex02_rule", kind="correct", name="a loop over prompts with list.index(max)", tags=("loops",), source='''
def best_of_n_gold(proxy, gold):
    P, G = np.asarray(proxy, dtype=float), np.asarray(gold, dtype=float)
    if P.ndim != 2 or P.shape != G.shape or P.shape[1] < 1:
        raise ValueError("proxy and gold must be 2-D arrays (prompts, n) of one shape, n >= 1")
    out = []
    for rp, rg in zip(P.tolist(), G.tolist()):
        out.append(rg[rp.index(max(rp))])
    return np.array(out)
'''),
    # ------------------------------------------------------------ overoptimized
    dict(cell="ex02_edge", kind="mistake", name="the proxy must end strictly above every earlier point", source=_over(cond="p[-1] > p[:-1].max() and g.max() - g[-1] > tol")),
    dict(cell="ex02_edge", kind="mistake", name=">= tol: a drop of exactly tol counts", source=_over(cond="p[-1] >= p.max() and g.max() - g[-1] >= tol and g.max() > g[-1]")),
    dict(cell="ex02_edge", kind="mistake", name="gold compared with its first value, not its peak", source=_over(cond="p[-1] >= p.max() and g[0] - g[-1] > tol")),
    dict(cell="ex02_edge", kind="mistake", name="ignores the tolerance", source=_over(cond="p[-1] >= p.max() and g.max() > g[-1]")),
    dict(cell="ex02_edge", kind="mistake", name="only looks at the gold curve", source=_over(cond="g.max() - g[-1] > tol")),
    dict(cell="ex02_edge", kind="correct", name="plain Python max over lists", tags=("loops",), source='''
def overoptimized(proxy_curve, gold_curve, tol=0.0):
    p, g = [float(v) for v in proxy_curve], [float(v) for v in gold_curve]
    if len(p) != len(g) or len(p) < 2:
        raise ValueError("the two curves need one length of at least two points")
    return p[-1] == max(p) and max(g) - g[-1] > tol
'''),
    # ------------------------------------------------------------ pearson
    dict(cell="ex02_metric", kind="mistake", name="the one-pass formula E[xy] - E[x]E[y] (no centring)", source=_pearson(body='''cov = (a * b).mean() - a.mean() * b.mean()
    va, vb = (a * a).mean() - a.mean() ** 2, (b * b).mean() - b.mean() ** 2
    if va <= 0 or vb <= 0:
        raise ValueError("zero variance")
    return float(cov / np.sqrt(va * vb))''')),
    dict(cell="ex02_metric", kind="mistake", name="sample covariance over population standard deviations", source=_pearson(body='''if a.std() == 0 or b.std() == 0:
        raise ValueError("zero variance")
    return float(np.cov(a, b)[0, 1] / (a.std() * b.std()))''')),
    dict(cell="ex02_metric", kind="mistake", name="no zero-variance check (returns nan)", source=_pearson(body='''with np.errstate(invalid="ignore", divide="ignore"):
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))''')),
    dict(cell="ex02_metric", kind="mistake", name="no length check (zip truncates)", source='''
def pearson(x, y):
    pairs = list(zip(x, y))
    if len(pairs) < 2:
        raise ValueError("need two points")
    a = np.array([p[0] for p in pairs], dtype=float); b = np.array([p[1] for p in pairs], dtype=float)
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    if den == 0:
        raise ValueError("zero variance")
    return float((a * b).sum() / den)
'''),
    dict(cell="ex02_metric", kind="correct", name="np.corrcoef after the checks", tags=("numpy", "vectorized"), source='''
def pearson(x, y):
    a, b = np.ravel(np.asarray(x, dtype=float)), np.ravel(np.asarray(y, dtype=float))
    if a.size != b.size or a.size < 2:
        raise ValueError("x and y need one length of at least two")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        raise ValueError("zero variance: the correlation is undefined")
    return float(np.corrcoef(a, b)[0, 1])
'''),
]
