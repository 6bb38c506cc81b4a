"""The scientific claims of the README, shown with numbers on the robot.

1. On a speed decrease ReLU overshoots more and settles later than Leaky ReLU.
2. Downhill, ReLU cannot hold the set speed (it runs away until drag balances
   gravity) while Leaky ReLU with integral action holds it.
3. Sweeping alpha from 0 to 1 moves continuously from ReLU to linear.
"""

import math

import numpy as np

import ctrlsim
from ctrlsim import Reference, Road, Scenario


def _decel():
    return Scenario(reference=Reference([(5.0, 1.0)]), duration=45.0, initial_speed=2.0)


def _downhill():
    return Scenario(reference=Reference([(0.0, 2.0)]), duration=40.0, initial_speed=2.0,
                    road=Road(((0.0, 0.0), (10.0, 0.0), (14.0, -3.0))))


def test_relu_overshoots_more_and_settles_later_than_leaky_on_a_decrease():
    relu = ctrlsim.simulate(_decel(), ctrlsim.ReLUController()).metrics()
    leaky = ctrlsim.simulate(_decel(), ctrlsim.LeakyReLUController(alpha=0.1)).metrics()
    assert relu["overshoot"] > 1.5 * leaky["overshoot"]
    assert relu["settling_time"] > leaky["settling_time"] + 3.0


def test_relu_coasts_when_too_fast():
    tr = ctrlsim.simulate(_decel(), ctrlsim.ReLUController())
    too_fast = tr.speed > tr.reference + 0.05
    assert too_fast.any()
    assert np.all(tr.applied[too_fast] >= 0.0)        # never brakes
    leaky = ctrlsim.simulate(_decel(), ctrlsim.LeakyReLUController(alpha=0.1))
    assert leaky.applied.min() < 0.0                   # brakes gently


def test_downhill_relu_runs_away_until_drag_balances_gravity():
    sc = _downhill()
    tr = ctrlsim.simulate(sc, ctrlsim.ReLUController())
    p = sc.plant
    theta = math.radians(3.0)
    # Terminal speed: rolling + drag = gravity along the slope.
    v = np.linspace(0, 10, 100001)
    resist = (p.rolling_resistance * p.mass * p.gravity * math.cos(theta) * np.tanh(v / 0.1)
              + p.drag_linear * v + p.drag_quadratic * v * v)
    v_terminal = v[np.argmin(np.abs(resist - p.mass * p.gravity * math.sin(theta)))]
    assert tr.speed[-1] > 2.0 + 0.5
    assert abs(tr.speed[-1] - v_terminal) < 0.01


def test_downhill_leaky_with_integral_action_holds_the_set_speed():
    tr = ctrlsim.simulate(_downhill(), ctrlsim.LeakyReLUController(alpha=0.1))
    last10 = tr.t >= tr.t[-1] - 10.0
    assert np.max(np.abs(tr.error[last10])) < 0.02 * 2.0
    assert tr.applied[-1] < 0.0


def test_alpha_sweep_moves_continuously_from_relu_to_linear():
    res = ctrlsim.sweep(_decel(), {"alpha": np.linspace(0, 1, 101)}, keep_trajectories=True)
    speeds = np.array([tr.speed for tr in res.trajectories])
    relu = ctrlsim.simulate(_decel(), ctrlsim.ReLUController())
    lin = ctrlsim.simulate(_decel(), ctrlsim.LinearController())
    assert np.array_equal(speeds[0], relu.speed) and np.array_equal(speeds[-1], lin.speed)
    ends = np.max(np.abs(relu.speed - lin.speed))
    steps = np.max(np.abs(np.diff(speeds, axis=0)), axis=1)
    assert ends > 0.3
    assert steps.max() < ends / 10  # a 0.01 change of alpha moves the response a little
    os_ = res.metrics["overshoot"]
    assert os_[0] > os_[10] and np.all(np.isfinite(os_))
