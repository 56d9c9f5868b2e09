"""Exercise 10, the KL coefficient beta: mistakes students make, and correct variants."""

EXERCISE = "ex10_the_kl_coefficient_beta"

DEPENDS = {
    "ex10_rule": ["ex10_rule_tests"],
    "ex10_edge": ["ex10_edge_tests"],      # the solution computes the optimum itself
    "ex10_metric": ["ex10_metric_tests"],  # the hidden identity uses the grader's own optimum
    "ex10_model": ["ex10_model_tests"],
}

_FT = '''
def kl_regularized_finetune(policy, reference, input_ids, attention_mask, token_rewards, beta, steps=30, lr=1e-3):
    opt = torch.optim.Adam(PARAMS, lr=lr)
    policy.train()
    for _ in range(steps):
        lp = next_token_logprobs(policy, input_ids, attention_mask)
        REF
        p = lp.exp()
        reward = (p * token_rewards).sum(-1)
        kl = KL
        loss = LOSS
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy
'''
_NOGRAD = '''with torch.no_grad():
            ref_lp = next_token_logprobs(reference, input_ids, attention_mask)'''


def _ft(params="policy.parameters()", ref=_NOGRAD, kl="(p * (lp - ref_lp)).sum(-1)", loss="-(reward - beta * kl).mean()"):
    return _FT.replace("PARAMS", params).replace("REF", ref).replace("KL", kl).replace("LOSS", loss)


_SB = '''
def smallest_beta_within_budget(ref_probs, rewards, budget, betas):
    ref = np.asarray(ref_probs, dtype=float)
    def kl(b):
        p = optimal_policy(ref, rewards, b)
        m = p > 0
        return KL
    ok = [b for b in ORDER if kl(b) <= budget]
    if not ok:
        raise ValueError("no beta fits")
    return PICK
'''


def _sb(kl="float(np.sum(p[m] * np.log(p[m] / ref[m])))", order="sorted(betas)", pick="ok[0]"):
    return _SB.replace("KL", kl).replace("ORDER", order).replace("PICK", pick)


ENTRIES = [
    # ------------------------------------------------------------ optimal_policy
    dict(cell="ex10_rule", kind="mistake", name="exp(r / beta) outside log space: overflow at tiny beta", source='''
def optimal_policy(ref_probs, rewards, beta):
    ref, r = np.asarray(ref_probs, dtype=float), np.asarray(rewards, dtype=float)
    if ref.shape != r.shape:
        raise ValueError("lengths differ")
    if beta <= 0:
        raise ValueError("beta must be positive")
    with np.errstate(over="ignore", invalid="ignore"):
        w = ref * np.exp(r / beta)
        return w / w.sum()
'''),
    dict(cell="ex10_rule", kind="mistake", name="r * beta instead of r / beta (beta's direction inverted)", source='''
def optimal_policy(ref_probs, rewards, beta):
    ref, r = np.asarray(ref_probs, dtype=float), np.asarray(rewards, dtype=float)
    if ref.shape != r.shape:
        raise ValueError("lengths differ")
    if beta <= 0:
        raise ValueError("beta must be positive")
    with np.errstate(divide="ignore"):
        l = np.log(ref) + r * beta
    w = np.exp(l - l.max())
    return w / w.sum()
'''),
    dict(cell="ex10_rule", kind="mistake", name="a softmax of the rewards alone, forgetting the reference", source='''
def optimal_policy(ref_probs, rewards, beta):
    ref, r = np.asarray(ref_probs, dtype=float), np.asarray(rewards, dtype=float)
    if ref.shape != r.shape:
        raise ValueError("lengths differ")
    if beta <= 0:
        raise ValueError("beta must be positive")
    l = r / beta
    w = np.exp(l - l.max())
    return w / w.sum()
'''),
    dict(cell="ex10_rule", kind="mistake", name="log(ref + 1e-12): zero reference mass comes back", source='''
def optimal_policy(ref_probs, rewards, beta):
    ref, r = np.asarray(ref_probs, dtype=float), np.asarray(rewards, dtype=float)
    if ref.shape != r.shape:
        raise ValueError("lengths differ")
    if beta <= 0:
        raise ValueError("beta must be positive")
    l = np.log(ref + 1e-12) + r / beta
    w = np.exp(l - l.max())
    return w / w.sum()
'''),
    dict(cell="ex10_rule", kind="mistake", name="no length check (a single reward broadcasts)", source='''
def optimal_policy(ref_probs, rewards, beta):
    ref, r = np.asarray(ref_probs, dtype=float), np.asarray(rewards, dtype=float)
    if beta <= 0:
        raise ValueError("beta must be positive")
    with np.errstate(divide="ignore"):
        l = np.log(ref) + r / beta
    w = np.exp(l - l.max())
    return w / w.sum()
'''),
    dict(cell="ex10_rule", kind="correct", name="torch logsumexp, converted back to numpy", tags=("torch",), source='''
def optimal_policy(ref_probs, rewards, beta):
    ref = torch.as_tensor(np.asarray(ref_probs, dtype=np.float64)).reshape(-1)
    r = torch.as_tensor(np.asarray(rewards, dtype=np.float64)).reshape(-1)
    if ref.shape != r.shape:
        raise ValueError("ref_probs and rewards differ in length")
    if not beta > 0:
        raise ValueError("beta must be > 0")
    logits = torch.log(ref) + r / beta
    return torch.exp(logits - torch.logsumexp(logits, 0)).numpy()
'''),
    # ------------------------------------------------------------ smallest_beta_within_budget
    dict(cell="ex10_edge", kind="mistake", name="returns the largest qualifying beta (direction confused)", source=_sb(pick="ok[-1]")),
    dict(cell="ex10_edge", kind="mistake", name="assumes the candidates are sorted", source=_sb(order="list(betas)")),
    dict(cell="ex10_edge", kind="mistake", name="the reverse KL, KL(ref || pi*)", source=_sb(kl="float(np.sum(ref * np.log(ref / np.maximum(p, 1e-300))))")),
    dict(cell="ex10_edge", kind="mistake", name="returns None when no candidate fits", source='''
def smallest_beta_within_budget(ref_probs, rewards, budget, betas):
    ref = np.asarray(ref_probs, dtype=float)
    for b in sorted(betas):
        p = optimal_policy(ref, rewards, b)
        m = p > 0
        if np.sum(p[m] * np.log(p[m] / ref[m])) <= budget:
            return b
    return None
'''),
    dict(cell="ex10_edge", kind="correct", name="uses optimal_policy from part 2", tags=("vectorized",), source=_sb()),
    # ------------------------------------------------------------ regularized_objective
    dict(cell="ex10_metric", kind="mistake", name="adds the KL penalty instead of subtracting it", source='''
def regularized_objective(probs, ref_probs, rewards, beta):
    p, q, r = (np.asarray(a, dtype=float) for a in (probs, ref_probs, rewards))
    if not (p.shape == q.shape == r.shape):
        raise ValueError("lengths differ")
    if beta <= 0:
        raise ValueError("beta must be positive")
    m = p > 0
    if (q[m] == 0).any():
        return -math.inf
    return float(np.sum(p * r) + beta * np.sum(p[m] * np.log(p[m] / q[m])))
'''),
    dict(cell="ex10_metric", kind="mistake", name="KL(ref || pi): the reverse direction", source='''
def regularized_objective(probs, ref_probs, rewards, beta):
    p, q, r = (np.asarray(a, dtype=float) for a in (probs, ref_probs, rewards))
    if not (p.shape == q.shape == r.shape):
        raise ValueError("lengths differ")
    if beta <= 0:
        raise ValueError("beta must be positive")
    m = p > 0
    if (q[m] == 0).any():
        return -math.inf
    with np.errstate(divide="ignore"):
        kl = np.sum(np.where(q > 0, q * np.log(q / p), 0.0))
    return float(np.sum(p * r) - beta * kl)
'''),
    dict(cell="ex10_metric", kind="mistake", name="0 * log 0 gives nan: zero mass poisons the sum", source='''
def regularized_objective(probs, ref_probs, rewards, beta):
    p, q, r = (np.asarray(a, dtype=float) for a in (probs, ref_probs, rewards))
    if not (p.shape == q.shape == r.shape):
        raise ValueError("lengths differ")
    if beta <= 0:
        raise ValueError("beta must be positive")
    if ((p > 0) & (q == 0)).any():
        return -math.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.sum(p * r) - beta * np.sum(p * np.log(p / q)))
'''),
    dict(cell="ex10_metric", kind="mistake", name="beta multiplies the reward, not the KL", source='''
def regularized_objective(probs, ref_probs, rewards, beta):
    p, q, r = (np.asarray(a, dtype=float) for a in (probs, ref_probs, rewards))
    if not (p.shape == q.shape == r.shape):
        raise ValueError("lengths differ")
    if beta <= 0:
        raise ValueError("beta must be positive")
    m = p > 0
    if (q[m] == 0).any():
        return -math.inf
    return float(beta * np.sum(p * r) - np.sum(p[m] * np.log(p[m] / q[m])))
'''),
    dict(cell="ex10_metric", kind="mistake", name="nan instead of -inf for mass outside the reference", source='''
def regularized_objective(probs, ref_probs, rewards, beta):
    p, q, r = (np.asarray(a, dtype=float) for a in (probs, ref_probs, rewards))
    if not (p.shape == q.shape == r.shape):
        raise ValueError("lengths differ")
    if beta <= 0:
        raise ValueError("beta must be positive")
    m = p > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.sum(p[m] * (np.log(p[m]) - np.log(q[m])))
    return float(np.sum(p * r) - beta * kl) if np.isfinite(kl) else float("nan")
'''),
    dict(cell="ex10_metric", kind="correct", name="a loop with math.log, float32 inputs tolerated", tags=("loops", "float32"), source='''
def regularized_objective(probs, ref_probs, rewards, beta):
    p = [float(x) for x in np.asarray(probs, dtype=np.float32).ravel()]
    q = [float(x) for x in np.asarray(ref_probs, dtype=np.float64).ravel()]
    r = [float(x) for x in np.asarray(rewards, dtype=np.float64).ravel()]
    if not (len(p) == len(q) == len(r)):
        raise ValueError("probs, ref_probs and rewards differ in length")
    if not beta > 0:
        raise ValueError("beta must be positive")
    total = 0.0
    for pi, qi, ri in zip(p, q, r):
        if pi > 0:
            if qi == 0:
                return -math.inf
            total += pi * ri - beta * pi * (math.log(pi) - math.log(qi))
    return total
'''),
    # ------------------------------------------------------------ kl_regularized_finetune (the model)
    dict(cell="ex10_model", kind="mistake", name="adds the KL term: the policy runs from the reference", source=_ft(loss="-(reward + beta * kl).mean()")),
    dict(cell="ex10_model", kind="mistake", name="divides by beta instead of multiplying (direction inverted)", source=_ft(loss="-(reward - kl / beta).mean()")),
    dict(cell="ex10_model", kind="mistake", name="the reverse KL, KL(ref || pi)", source=_ft(kl="(ref_lp.exp() * (ref_lp - lp)).sum(-1)")),
    dict(cell="ex10_model", kind="mistake", name="the reference in the optimizer and computed with gradient (not frozen)",
         source=_ft(params="list(policy.parameters()) + list(reference.parameters())",
                    ref="ref_lp = next_token_logprobs(reference, input_ids, attention_mask)")),
    dict(cell="ex10_model", kind="mistake", name="minimizes the objective (gradient descent on J)", source=_ft(loss="(reward - beta * kl).mean()")),
    dict(cell="ex10_model", kind="correct", name="per-prompt loop, loss summed over prompts, a warning on stderr", tags=("loops", "stderr"), source='''
import sys

def kl_regularized_finetune(policy, reference, input_ids, attention_mask, token_rewards, beta, steps=30, lr=1e-3):
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    with torch.no_grad():
        ref_lp = next_token_logprobs(reference, input_ids, attention_mask)
    for _ in range(steps):
        lp = next_token_logprobs(policy, input_ids, attention_mask)
        loss = 0.0
        for b in range(lp.shape[0]):
            p = lp[b].exp()
            loss = loss - ((p * token_rewards).sum() - beta * (p * (lp[b] - ref_lp[b])).sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
    print("kl_regularized_finetune: done", file=sys.stderr)
    return policy
'''),
]
