import copy

import torch

from cellvi.train.optim import AdamStep, clear_grads, make_adam


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))


def _train(model, step_fn, optimizer, n_steps: int, skip_grad_at: int | None = None) -> None:
    gen = torch.Generator().manual_seed(1)
    for i in range(n_steps):
        x = torch.randn(16, 7, generator=gen)
        clear_grads(optimizer)
        model(x).pow(2).mean().backward()
        if i == skip_grad_at:
            model[2].bias.grad = None  # a parameter without gradient this step
        step_fn()


def test_direct_adam_step_is_bit_identical_to_optimizer_step():
    ref, fast = _model(0), _model(0)
    opt_ref = make_adam(list(ref.parameters()), lr=1e-2, eps=0.01, weight_decay=1e-3)
    opt_fast = make_adam(list(fast.parameters()), lr=1e-2, eps=0.01, weight_decay=1e-3)
    step = AdamStep(opt_fast)
    assert step.direct  # the fused kernel is there on CPU
    _train(ref, opt_ref.step, opt_ref, 12, skip_grad_at=5)
    _train(fast, step, opt_fast, 12, skip_grad_at=5)
    for a, b in zip(ref.parameters(), fast.parameters()):
        assert torch.equal(a, b)
    # the optimiser's own state is what the direct calls left: moments and step counts
    for pa, pb in zip(ref.parameters(), fast.parameters()):
        sa, sb = opt_ref.state[pa], opt_fast.state[pb]
        assert float(sa["step"]) == float(sb["step"])
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_direct_adam_step_follows_a_loaded_state():
    ref, fast = _model(0), _model(0)
    opt_ref = make_adam(list(ref.parameters()), lr=1e-2, eps=0.01, weight_decay=0.0)
    opt_fast = make_adam(list(fast.parameters()), lr=1e-2, eps=0.01, weight_decay=0.0)
    step = AdamStep(opt_fast)
    _train(ref, opt_ref.step, opt_ref, 6)
    _train(fast, step, opt_fast, 4)  # another state than the one loaded below
    saved = copy.deepcopy(opt_ref.state_dict())
    opt_fast.load_state_dict(saved)  # replaces the state tensors the direct call held
    fast.load_state_dict(ref.state_dict())
    _train(ref, opt_ref.step, opt_ref, 3)
    _train(fast, step, opt_fast, 3)
    for a, b in zip(ref.parameters(), fast.parameters()):
        assert torch.equal(a, b)
