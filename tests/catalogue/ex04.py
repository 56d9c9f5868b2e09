"""Exercise 4, DPO: mistakes students make, and correct variants."""

EXERCISE = "ex04_dpo_without_a_reward_model"

DEPENDS = {
    "ex04_rule": ["ex04_rule_tests"],
    "ex04_edge": ["ex04_edge_tests"],
    "ex04_metric": ["ex04_metric_tests"],
    "ex04_model": ["ex04_model_tests"],
    "ex04_train": ["ex04_train_tests"],   # the solution's dpo_train writes the loss out itself
}

_TRAIN = '''
def dpo_train(policy, reference, records, beta=0.1, steps=20, lr=3e-4, batch_size=8):
    opt = torch.optim.Adam(OPT_PARAMS, lr=LR)
    policy.train()
    history = []
    for step in range(steps):
        chunk = [records[(step * batch_size + j) % len(records)] for j in range(batch_size)]
        prompts = [r["prompt"] for r in chunk]
        c = encode(tok, prompts, [r["chosen"] for r in chunk])
        r = encode(tok, prompts, [r["rejected"] for r in chunk])
        lpc = sequence_logprobs(policy, c.input_ids, c.attention_mask, c.response_mask, average=AVG)
        lpr = sequence_logprobs(policy, r.input_ids, r.attention_mask, r.response_mask, average=AVG)
        REFERENCE
        loss = -F.logsigmoid(SIGN * beta * ((lpc - lrc) - (lpr - lrr))).mean()
        history.append({"loss": loss.item(), "logps/chosen": lpc.mean().item(), "logps/rejected": lpr.mean().item()})
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.eval()
    return policy, history
'''
_FROZEN = '''with torch.no_grad():
            lrc = sequence_logprobs(reference, c.input_ids, c.attention_mask, c.response_mask, average=AVG)
            lrr = sequence_logprobs(reference, r.input_ids, r.attention_mask, r.response_mask, average=AVG)'''


def _train(opt="policy.parameters()", lr="lr", avg="False", sign="1.0", ref=_FROZEN):
    return (_TRAIN.replace("REFERENCE", ref).replace("OPT_PARAMS", opt).replace("LR", lr)
            .replace("AVG", avg).replace("SIGN", sign))


ENTRIES = [
    # ------------------------------------------------------------ dpo_loss (numpy)
    dict(cell="ex04_rule", kind="mistake", name="log(1 + exp(-beta h)) overflows at large margins", source='''
def dpo_loss(pc, pr, rc, rr, beta):
    pc, pr, rc, rr = (np.asarray(a, dtype=float) for a in (pc, pr, rc, rr))
    if not (pc.shape == pr.shape == rc.shape == rr.shape):
        raise ValueError("shapes differ")
    if beta <= 0:
        raise ValueError("beta must be positive")
    with np.errstate(over="ignore"):
        return np.log(1.0 + np.exp(-beta * ((pc - rc) - (pr - rr))))
'''),
    dict(cell="ex04_rule", kind="mistake", name="sign of the margin flipped", source='''
def dpo_loss(pc, pr, rc, rr, beta):
    pc, pr, rc, rr = (np.asarray(a, dtype=float) for a in (pc, pr, rc, rr))
    if not (pc.shape == pr.shape == rc.shape == rr.shape):
        raise ValueError("shapes differ")
    if beta <= 0:
        raise ValueError("beta must be positive")
    return np.logaddexp(0.0, beta * ((pc - rc) - (pr - rr)))
'''),
    dict(cell="ex04_rule", kind="mistake", name="beta left out of the loss", source='''
def dpo_loss(pc, pr, rc, rr, beta):
    pc, pr, rc, rr = (np.asarray(a, dtype=float) for a in (pc, pr, rc, rr))
    if not (pc.shape == pr.shape == rc.shape == rr.shape):
        raise ValueError("shapes differ")
    if beta <= 0:
        raise ValueError("beta must be positive")
    return np.logaddexp(0.0, -((pc - rc) - (pr - rr)))
'''),
    dict(cell="ex04_rule", kind="mistake", name="no shape check (broadcasting hides a mismatch)", source='''
def dpo_loss(pc, pr, rc, rr, beta):
    if beta <= 0:
        raise ValueError("beta must be positive")
    pc, pr, rc, rr = (np.asarray(a, dtype=float) for a in (pc, pr, rc, rr))
    return np.logaddexp(0.0, -beta * ((pc - rc) - (pr - rr)))
'''),
    dict(cell="ex04_rule", kind="mistake", name="returns the batch mean instead of one loss per pair", source='''
def dpo_loss(pc, pr, rc, rr, beta):
    pc, pr, rc, rr = (np.asarray(a, dtype=float) for a in (pc, pr, rc, rr))
    if not (pc.shape == pr.shape == rc.shape == rr.shape):
        raise ValueError("shapes differ")
    if beta <= 0:
        raise ValueError("beta must be positive")
    return np.array(np.logaddexp(0.0, -beta * ((pc - rc) - (pr - rr))).mean())
'''),
    dict(cell="ex04_rule", kind="correct", name="torch's logsigmoid, converted back to numpy", tags=("torch",), source='''
def dpo_loss(pc, pr, rc, rr, beta):
    t = [torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (pc, pr, rc, rr)]
    if len({tuple(x.shape) for x in t}) != 1:
        raise ValueError("pc, pr, rc, rr must have one shape")
    if not beta > 0:
        raise ValueError("beta must be > 0")
    h = (t[0] - t[2]) - (t[1] - t[3])
    return (-F.logsigmoid(beta * h)).numpy()
'''),
    # ------------------------------------------------------------ chosen_fell
    dict(cell="ex04_edge", kind="mistake", name=">= on the margin: an unchanged margin counts as grown", source='''
def chosen_fell(pc_before, pr_before, pc_after, pr_after):
    cb, rb, ca, ra = (np.asarray(a, dtype=float) for a in (pc_before, pr_before, pc_after, pr_after))
    if not (cb.shape == rb.shape == ca.shape == ra.shape):
        raise ValueError("shapes differ")
    return ((ca - ra) >= (cb - rb)) & (ca < cb)
'''),
    dict(cell="ex04_edge", kind="mistake", name="<= on the chosen log-prob: unchanged counts as fallen", source='''
def chosen_fell(pc_before, pr_before, pc_after, pr_after):
    cb, rb, ca, ra = (np.asarray(a, dtype=float) for a in (pc_before, pr_before, pc_after, pr_after))
    if not (cb.shape == rb.shape == ca.shape == ra.shape):
        raise ValueError("shapes differ")
    return ((ca - ra) > (cb - rb)) & (ca <= cb)
'''),
    dict(cell="ex04_edge", kind="mistake", name="'both log-probs fell' instead of 'margin grew'", source='''
def chosen_fell(pc_before, pr_before, pc_after, pr_after):
    cb, rb, ca, ra = (np.asarray(a, dtype=float) for a in (pc_before, pr_before, pc_after, pr_after))
    if not (cb.shape == rb.shape == ca.shape == ra.shape):
        raise ValueError("shapes differ")
    return (ra < rb) & (ca < cb)
'''),
    dict(cell="ex04_edge", kind="mistake", name="returns a list", source='''
def chosen_fell(pc_before, pr_before, pc_after, pr_after):
    if not len(pc_before) == len(pr_before) == len(pc_after) == len(pr_after):
        raise ValueError("lengths differ")
    return [(ca - ra) > (cb - rb) and ca < cb for cb, rb, ca, ra in zip(pc_before, pr_before, pc_after, pr_after)]
'''),
    dict(cell="ex04_edge", kind="mistake", name="no shape check", source='''
def chosen_fell(pc_before, pr_before, pc_after, pr_after):
    cb, rb, ca, ra = (np.asarray(a, dtype=float) for a in (pc_before, pr_before, pc_after, pr_after))
    return ((ca - ra) > (cb - rb)) & (ca < cb)
'''),
    dict(cell="ex04_edge", kind="correct", name="a loop building a boolean array", tags=("loops",), source='''
def chosen_fell(pc_before, pr_before, pc_after, pr_after):
    cols = [list(np.asarray(a, dtype=float).reshape(-1)) for a in (pc_before, pr_before, pc_after, pr_after)]
    if len({len(c) for c in cols}) != 1:
        raise ValueError("the four inputs must have one length")
    out = [bool(ca - ra > cb - rb and ca < cb) for cb, rb, ca, ra in zip(*cols)]
    return np.array(out, dtype=bool)
'''),
    # ------------------------------------------------------------ reward_accuracy
    dict(cell="ex04_metric", kind="mistake", name="ties count as wrong", source='''
def reward_accuracy(pc, pr, rc, rr, beta):
    pc, pr, rc, rr = (np.asarray(a, dtype=float) for a in (pc, pr, rc, rr))
    if not (pc.shape == pr.shape == rc.shape == rr.shape):
        raise ValueError("lengths differ")
    if pc.size == 0 or beta <= 0:
        raise ValueError("no pairs or bad beta")
    return float(np.mean(beta * (pc - rc) > beta * (pr - rr)))
'''),
    dict(cell="ex04_metric", kind="mistake", name="ties count as right (>=)", source='''
def reward_accuracy(pc, pr, rc, rr, beta):
    pc, pr, rc, rr = (np.asarray(a, dtype=float) for a in (pc, pr, rc, rr))
    if not (pc.shape == pr.shape == rc.shape == rr.shape):
        raise ValueError("lengths differ")
    if pc.size == 0 or beta <= 0:
        raise ValueError("no pairs or bad beta")
    return float(np.mean(beta * (pc - rc) >= beta * (pr - rr)))
'''),
    dict(cell="ex04_metric", kind="mistake", name="compares the policy's log-probs, forgetting the reference", source='''
def reward_accuracy(pc, pr, rc, rr, beta):
    pc, pr, rc, rr = (np.asarray(a, dtype=float) for a in (pc, pr, rc, rr))
    if not (pc.shape == pr.shape == rc.shape == rr.shape):
        raise ValueError("lengths differ")
    if pc.size == 0 or beta <= 0:
        raise ValueError("no pairs or bad beta")
    return float(np.mean(np.where(pc > pr, 1.0, np.where(pc == pr, 0.5, 0.0))))
'''),
    dict(cell="ex04_metric", kind="mistake", name="no check on beta", source='''
def reward_accuracy(pc, pr, rc, rr, beta):
    pc, pr, rc, rr = (np.asarray(a, dtype=float) for a in (pc, pr, rc, rr))
    if not (pc.shape == pr.shape == rc.shape == rr.shape):
        raise ValueError("lengths differ")
    if pc.size == 0:
        raise ValueError("no pairs")
    rw, rl = beta * (pc - rc), beta * (pr - rr)
    return float(np.mean(np.where(rw > rl, 1.0, np.where(rw == rl, 0.5, 0.0))))
'''),
    dict(cell="ex04_metric", kind="mistake", name="zip without a length check", source='''
def reward_accuracy(pc, pr, rc, rr, beta):
    if beta <= 0:
        raise ValueError("beta must be positive")
    scores = [1.0 if a - c > b - d else (0.5 if a - c == b - d else 0.0) for a, b, c, d in zip(pc, pr, rc, rr)]
    if not scores:
        raise ValueError("no pairs")
    return sum(scores) / len(scores)
'''),
    dict(cell="ex04_metric", kind="correct", name="torch tensors, .item() at the end", tags=("torch",), source='''
def reward_accuracy(pc, pr, rc, rr, beta):
    t = [torch.as_tensor(np.asarray(a, dtype=np.float64)).reshape(-1) for a in (pc, pr, rc, rr)]
    if len({x.numel() for x in t}) != 1:
        raise ValueError("inputs differ in length")
    if t[0].numel() == 0:
        raise ValueError("no pairs")
    if not beta > 0:
        raise ValueError("beta must be positive")
    rw, rl = beta * (t[0] - t[2]), beta * (t[1] - t[3])
    return ((rw > rl).double() + 0.5 * (rw == rl).double()).mean().item()
'''),
    # ------------------------------------------------------------ dpo_batch_loss (torch)
    dict(cell="ex04_model", kind="mistake", name="sums over the batch instead of averaging", source='''
def dpo_batch_loss(pc, pr, rc, rr, beta):
    if beta <= 0:
        raise ValueError("beta must be positive")
    if not (pc.shape == pr.shape == rc.shape == rr.shape):
        raise ValueError("shapes differ")
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).sum()
'''),
    dict(cell="ex04_model", kind="mistake", name="sign flipped: trains towards the rejected response", source='''
def dpo_batch_loss(pc, pr, rc, rr, beta):
    if beta <= 0:
        raise ValueError("beta must be positive")
    if not (pc.shape == pr.shape == rc.shape == rr.shape):
        raise ValueError("shapes differ")
    return -F.logsigmoid(-beta * ((pc - rc) - (pr - rr))).mean()
'''),
    dict(cell="ex04_model", kind="mistake", name="log(sigmoid(.)): -inf at large margins in float32", source='''
def dpo_batch_loss(pc, pr, rc, rr, beta):
    if beta <= 0:
        raise ValueError("beta must be positive")
    if not (pc.shape == pr.shape == rc.shape == rr.shape):
        raise ValueError("shapes differ")
    return -torch.log(torch.sigmoid(beta * ((pc - rc) - (pr - rr)))).mean()
'''),
    dict(cell="ex04_model", kind="mistake", name=".item() breaks the graph: no gradient", source='''
def dpo_batch_loss(pc, pr, rc, rr, beta):
    if beta <= 0:
        raise ValueError("beta must be positive")
    if not (pc.shape == pr.shape == rc.shape == rr.shape):
        raise ValueError("shapes differ")
    return torch.tensor(-F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean().item())
'''),
    dict(cell="ex04_model", kind="mistake", name="returns the per-pair losses, not their mean", source='''
def dpo_batch_loss(pc, pr, rc, rr, beta):
    if beta <= 0:
        raise ValueError("beta must be positive")
    if not (pc.shape == pr.shape == rc.shape == rr.shape):
        raise ValueError("shapes differ")
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))
'''),
    dict(cell="ex04_model", kind="correct", name="softplus in float64, cast back to float32, a warning on stderr", tags=("float32", "stderr"), source='''
import warnings

def dpo_batch_loss(pc, pr, rc, rr, beta):
    if not beta > 0:
        raise ValueError("beta must be positive")
    if pc.shape != pr.shape or pc.shape != rc.shape or pc.shape != rr.shape:
        raise ValueError("shapes differ")
    warnings.warn("dpo_batch_loss computes in float64")
    h = (pc.double() - rc.double()) - (pr.double() - rr.double())
    return F.softplus(-beta * h).mean().to(pc.dtype)
'''),
    # ------------------------------------------------------------ dpo_train (the run)
    dict(cell="ex04_train", kind="mistake", name="sign flipped in the loop", source=_train(sign="-1.0")),
    dict(cell="ex04_train", kind="mistake", name="the reference's parameters in the optimizer (not frozen)",
         source=_train(opt="list(policy.parameters()) + list(reference.parameters())", ref='''lrc = sequence_logprobs(reference, c.input_ids, c.attention_mask, c.response_mask, average=AVG)
        lrr = sequence_logprobs(reference, r.input_ids, r.attention_mask, r.response_mask, average=AVG)''')),
    dict(cell="ex04_train", kind="mistake", name="the policy as its own reference (log-ratios always 0)",
         source=_train(ref="lrc, lrr = lpc.detach(), lpr.detach()")),
    dict(cell="ex04_train", kind="mistake", name="learning rate hard-coded to 1e-3 (drifts past the KL budget)", source=_train(lr="1e-3")),
    dict(cell="ex04_train", kind="mistake", name="per-token averaged log-probs (loss and logs)", source=_train(avg="True")),
    dict(cell="ex04_train", kind="correct", name="one forward pass on chosen and rejected together, gradient clipping",
         tags=("vectorized", "torch"), source='''
def dpo_train(policy, reference, records, beta=0.1, steps=20, lr=3e-4, batch_size=8):
    from preflab.model import position_ids_from
    opt = torch.optim.Adam(policy.parameters(), lr=lr)

    def logps(model, ids, attn, resp):
        out = model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from(attn)).logits[:, :-1]
        lp = torch.log_softmax(out.float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        return (lp * resp[:, 1:]).sum(-1)

    history = []
    for step in range(steps):
        chunk = [records[(step * batch_size + j) % len(records)] for j in range(batch_size)]
        both = encode(tok, [r["prompt"] for r in chunk] * 2, [r["chosen"] for r in chunk] + [r["rejected"] for r in chunk])
        n = len(chunk)
        lp = logps(policy, both.input_ids, both.attention_mask, both.response_mask)
        with torch.no_grad():
            lr_ = logps(reference, both.input_ids, both.attention_mask, both.response_mask)
        h = (lp[:n] - lr_[:n]) - (lp[n:] - lr_[n:])
        loss = dpo_batch_loss(lp[:n], lp[n:], lr_[:n], lr_[n:], beta)
        history.append(dict(loss=float(loss), **{"logps/chosen": float(lp[:n].mean()), "logps/rejected": float(lp[n:].mean())}))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
    return policy, history
'''),
]
