"""Batch rollouts: numba ``rollout_batch`` on all cores vs the same loop in C on one.

The C below is a line-by-line translation of ``ctrlsim.kernels`` (plant RK4
substeps, actuator lag, grade interpolation, events, the digital PID-family
loop with its activation, clipping and anti-windup). It is compiled with gcc
at run time into a temporary directory and called through ctypes, single
threaded. Both versions run the same 256 parameter sets of a robot scenario
and must produce the same final speeds before any time is reported.

Throughput is RK4 substeps per second: rows * N * substeps / seconds.

Run: ``python benchmarks/bench_batch_vs_c.py``
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numba
import numpy as np

import ctrlsim
from ctrlsim import Event, LeakyReLUController, Reference, Road, Scenario, make_plant
from ctrlsim import kernels as K

TARGET = 1.5          # numba on all cores vs single-thread C
REPEATS = 3           # best-of
FINAL_SPEED_TOL = 1e-9

C_SOURCE = r"""
#include <math.h>

enum { P_KIND, P_MASS, P_G, P_CR, P_DLIN, P_DQUAD, P_TAU, P_CMD_LO, P_CMD_HI,
       P_GEAR_RATIO, P_TMAX, P_WMAX, P_BETA, P_BRAKE, N_PLANT };
enum { C_ALPHA, C_KP, C_KI, C_KD, C_KAW, C_FF, N_CTRL };
#define KIND_CAR 1.0
#define V_ROLL 0.1
#define STAGE_EPS 1e-9
#define N_OUT 5

typedef struct {
    const double *gx, *gth; long ng; int by_time;
    const double *ev; long nev;
} Profile;

/* Python's max/min on two floats, as numba lowers them. */
static inline double py_max(double a, double b) { return b > a ? b : a; }
static inline double py_min(double a, double b) { return b < a ? b : a; }

static double interp_clamped(double x, const double *xp, const double *fp, long n) {
    if (n == 0) return 0.0;
    if (isnan(x)) return x;
    if (x <= xp[0]) return fp[0];
    if (x >= xp[n - 1]) return fp[n - 1];
    long i = 1;
    while (xp[i] < x) i++;
    double w = (x - xp[i - 1]) / (xp[i] - xp[i - 1]);
    return fp[i - 1] + w * (fp[i] - fp[i - 1]);
}

static void events_at(double t, const Profile *pr, double *payload, double *force) {
    double pl = 0.0, fo = 0.0;
    for (long j = 0; j < pr->nev; j++) {
        const double *e = pr->ev + 4 * j;
        if (e[0] <= t && t < e[1]) { fo += e[2]; pl += e[3]; }
    }
    *payload = pl; *force = fo;
}

/* tanh(v / V_ROLL); beyond |x| = 19.1 the rounded tanh is exactly +-1 (as in kernels.py). */
static inline double smooth_sign(double v) {
    double x = v / V_ROLL;
    return fabs(x) > 19.1 ? copysign(1.0, x) : tanh(x);
}

static double motor_torque(double omega, const double *pp) {
    double x = omega / pp[P_WMAX] - 1.0;
    return py_max(pp[P_TMAX] * (1.0 - pp[P_BETA] * x * x), 0.0);
}

static double actuator_force(double a, double v, const double *pp) {
    if (pp[P_KIND] == KIND_CAR) {
        if (a >= 0.0) {
            double gr = pp[P_GEAR_RATIO];
            return gr * motor_torque(gr * v, pp) * a;
        }
        return pp[P_BRAKE] * a * smooth_sign(v);
    }
    return a;
}

static double resistance(double v, double theta, double m, const double *pp) {
    double roll = pp[P_CR] * m * pp[P_G] * cos(theta) * smooth_sign(v);
    return roll + pp[P_DLIN] * v + pp[P_DQUAD] * v * fabs(v);
}

static void derivatives(double p, double v, double f, double t, double a,
                        const double *pp, const Profile *pr,
                        double *dp, double *dv, double *df) {
    double theta = interp_clamped(pr->by_time ? t : p, pr->gx, pr->gth, pr->ng);
    double payload, f_ext;
    events_at(t, pr, &payload, &f_ext);
    double m = pp[P_MASS] + payload;
    double f_target = actuator_force(a, v, pp);
    if (pp[P_TAU] > 0.0) {
        *df = (f_target - f) / pp[P_TAU];
    } else {
        *df = 0.0;
        f = f_target;
    }
    *dv = (f - resistance(v, theta, m, pp) - m * pp[P_G] * sin(theta) + f_ext) / m;
    *dp = v;
}

static void plant_interval(double *p_, double *v_, double *f_, double a, double t0,
                           double dt, long substeps, const double *pp,
                           const Profile *pr) {
    double p = *p_, v = *v_, f = *f_;
    double h = dt / substeps;
    double lo = STAGE_EPS * h;
    for (long j = 0; j < substeps; j++) {
        double ta = t0 + j * h;
        double k1p, k1v, k1f, k2p, k2v, k2f, k3p, k3v, k3f, k4p, k4v, k4f;
        derivatives(p, v, f, ta + lo, a, pp, pr, &k1p, &k1v, &k1f);
        derivatives(p + 0.5 * h * k1p, v + 0.5 * h * k1v, f + 0.5 * h * k1f,
                    ta + 0.5 * h, a, pp, pr, &k2p, &k2v, &k2f);
        derivatives(p + 0.5 * h * k2p, v + 0.5 * h * k2v, f + 0.5 * h * k2f,
                    ta + 0.5 * h, a, pp, pr, &k3p, &k3v, &k3f);
        derivatives(p + h * k3p, v + h * k3v, f + h * k3f,
                    ta + h - lo, a, pp, pr, &k4p, &k4v, &k4f);
        p += h / 6.0 * (k1p + 2.0 * k2p + 2.0 * k3p + k4p);
        v += h / 6.0 * (k1v + 2.0 * k2v + 2.0 * k3v + k4v);
        f += h / 6.0 * (k1f + 2.0 * k2f + 2.0 * k3f + k4f);
    }
    *p_ = p; *v_ = v; *f_ = f;
}

static double equilibrium_command(double v0, const double *pp, const Profile *pr,
                                  int *feasible) {
    double theta = interp_clamped(0.0, pr->gx, pr->gth, pr->ng);
    double payload, f_ext, a0;
    events_at(0.0, pr, &payload, &f_ext);
    double m = pp[P_MASS] + payload;
    double f_req = resistance(v0, theta, m, pp) + m * pp[P_G] * sin(theta) - f_ext;
    double unit = f_req >= 0.0 ? 1.0 : -1.0;
    double gain = unit * actuator_force(unit, v0, pp);
    if (gain > 0.0)
        a0 = f_req / gain;
    else
        a0 = f_req == 0.0 ? 0.0 : unit * INFINITY;
    double lo = pp[P_CMD_LO], hi = pp[P_CMD_HI];
    *feasible = lo <= a0 && a0 <= hi;
    return py_min(py_max(a0, lo), hi);
}

static long rollout(const double *pp, const double *cp, double v0, const double *ref,
                    const double *noise, long n1, double ts, long substeps,
                    const Profile *pr, double v_limit, double *out, int *feasible) {
    long n = n1 - 1;
    double lo = pp[P_CMD_LO], hi = pp[P_CMD_HI];
    double ki = cp[C_KI], kaw = cp[C_KAW], alpha = cp[C_ALPHA];
    int has_lag = pp[P_TAU] > 0.0;
    double a0 = equilibrium_command(v0, pp, pr, feasible);
    /* controller_preload */
    double s0 = (a0 < 0.0 && alpha > 0.0) ? a0 / alpha : a0;
    double z = ki != 0.0 ? (s0 - cp[C_FF] * v0) / ki : 0.0;
    double u0 = s0 >= 0.0 ? s0 : alpha * s0;
    double p = 0.0, v = v0;
    double f = actuator_force(py_min(py_max(u0, lo), hi), v0, pp);
    double e_prev = 0.0;
    for (long k = 0; k <= n; k++) {
        double y = v + noise[k];
        double e = ref[k] - y;
        double d = k > 0 ? (e - e_prev) / ts : 0.0;
        double s = cp[C_KP] * e + cp[C_KI] * z + cp[C_KD] * d + cp[C_FF] * ref[k];
        double u = s >= 0.0 ? s : alpha * s;
        if (!(isfinite(u) && isfinite(z))) {
            for (long i = k * N_OUT; i < n1 * N_OUT; i++) out[i] = NAN;
            return k;
        }
        double a = py_min(py_max(u, lo), hi);
        if (ki != 0.0) z += ts * (e + (kaw / ki) * (a - s));
        double *row = out + k * N_OUT;
        row[0] = p;
        row[1] = v;
        row[2] = has_lag ? f : actuator_force(a, v, pp);
        row[3] = u;
        row[4] = a;
        if (k == n) break;
        plant_interval(&p, &v, &f, a, k * ts, ts, substeps, pp, pr);
        if (!(isfinite(p) && isfinite(v) && isfinite(f) && fabs(v) <= v_limit)) {
            for (long i = (k + 1) * N_OUT; i < n1 * N_OUT; i++) out[i] = NAN;
            return k + 1;
        }
        e_prev = e;
    }
    return -1;
}

void rollout_batch(long b, const double *pp, const double *cp, double v0,
                   const double *ref, const double *noise, long n1, double ts,
                   long substeps, const double *gx, const double *gth, long ng,
                   int by_time, const double *ev, long nev, double v_limit,
                   double *out, long *diverged_at, unsigned char *feasible) {
    Profile pr = {gx, gth, ng, by_time, ev, nev};
    for (long i = 0; i < b; i++) {
        int feas;
        diverged_at[i] = rollout(pp + i * N_PLANT, cp + i * N_CTRL, v0, ref, noise, n1,
                                 ts, substeps, &pr, v_limit, out + i * n1 * N_OUT, &feas);
        feasible[i] = (unsigned char)feas;
    }
}
"""

# gcc flag sets: the plain build the comparison is specified with, and a build
# tuned for this CPU (numba compiles for the host CPU too). FP contraction is
# off so the tuned build does not fuse multiply-adds the numba code does not.
C_BUILDS = {
    "C gcc -O3": ["-O3"],
    "C gcc -O3 -march=native": ["-O3", "-march=native", "-ffp-contract=off"],
}


def build_c(workdir: str, index: int, flags: list[str]) -> ctypes.CDLL:
    """Compile :data:`C_SOURCE` into ``rollout_<index>.so`` and bind ``rollout_batch``."""
    src = os.path.join(workdir, "rollout.c")
    with open(src, "w") as fh:
        fh.write(C_SOURCE)
    lib_path = os.path.join(workdir, f"rollout_{index}.so")
    cmd = ["gcc", *flags, "-fPIC", "-shared", "-o", lib_path, src, "-lm"]
    subprocess.run(cmd, check=True)
    lib = ctypes.CDLL(lib_path)
    dbl = ctypes.c_double
    arr = np.ctypeslib.ndpointer(dtype=np.float64, flags="C_CONTIGUOUS")
    lib.rollout_batch.restype = None
    lib.rollout_batch.argtypes = [
        ctypes.c_long, arr, arr, dbl, arr, arr, ctypes.c_long, dbl, ctypes.c_long,
        arr, arr, ctypes.c_long, ctypes.c_int, arr, ctypes.c_long, dbl, arr,
        np.ctypeslib.ndpointer(dtype=np.int64, flags="C_CONTIGUOUS"),
        np.ctypeslib.ndpointer(dtype=np.uint8, flags="C_CONTIGUOUS"),
    ]
    lib.command = " ".join(cmd)
    return lib


ALPHAS = np.linspace(0.0, 1.0, 16)
KPS = np.linspace(40.0, 160.0, 16)   # N/(m/s)


def make_workload(duration: float):
    """A robot scenario with a grade, a payload event and a set-speed change,
    and 256 parameter sets (16 alphas x 16 proportional gains, C order as in
    :func:`ctrlsim.sweep`)."""
    sc = Scenario(reference=Reference([(0.0, 2.0), (duration / 2, 1.0)]),
                  duration=duration, control_period=0.01, substeps=10,
                  initial_speed=1.0, plant=make_plant("robot"),
                  road=Road(((5.0, 0.0), (15.0, -3.0), (40.0, -3.0), (50.0, 2.0))),
                  events=(Event(at=duration / 4, payload=5.0),))
    base = sc.resolved_controller()
    ctls = [LeakyReLUController(alpha=alpha, kp=kp, ki=base.ki, kd=base.kd, kaw=base.kaw,
                                feedforward=base.feedforward)
            for alpha in ALPHAS for kp in KPS]
    pp = np.array([sc.plant.pack()] * len(ctls))
    cp = np.array([c.pack() for c in ctls])
    return sc, pp, cp, sc.pack()


def car_workload():
    """A short car run with a hill and a speed decrease (throttle and brake),
    only to check that the C car actuator matches the kernel too."""
    sc = Scenario(reference=Reference([(0.0, 20.0), (10.0, 15.0)]), duration=20.0,
                  control_period=0.01, substeps=2, initial_speed=20.0,
                  plant=make_plant("car"), road=Road(((0.0, 0.0), (100.0, 4.0)), by="position"))
    ctls = [ctrlsim.controller(spec).resolve(None, "car")
            for spec in ("relu", "leaky:0.3", "linear,kaw=0")]
    pp = np.array([sc.plant.pack()] * len(ctls))
    return sc, pp, np.array([c.pack() for c in ctls]), sc.pack()


def run_numba(pp, cp, prof, out, div, feas):
    K.rollout_batch(pp, cp, prof.v0, prof.ref, prof.noise, prof.ts, prof.substeps,
                    prof.grade_x, prof.grade_th, prof.grade_by_time, prof.events,
                    prof.v_limit, out, div, feas)


def run_c(lib, pp, cp, prof, out, div, feas):
    lib.rollout_batch(pp.shape[0], pp, cp, prof.v0, prof.ref, prof.noise, prof.ref.size,
                      prof.ts, prof.substeps, prof.grade_x, prof.grade_th,
                      prof.grade_x.size, int(prof.grade_by_time),
                      np.ascontiguousarray(prof.events), prof.events.shape[0],
                      prof.v_limit, out, div, feas.view(np.uint8))


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cpu_model() -> str:
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    if shutil.which("gcc") is None:
        sys.exit("gcc not found")
    n_threads = numba.get_num_threads()
    print(f"ctrlsim {ctrlsim.__version__}, numba {numba.__version__}, "
          f"numpy {np.__version__}, {os.cpu_count()} CPUs ({cpu_model()}), "
          f"numba threads {n_threads}")

    # Sized so that the fastest variant takes >= 1 s per measurement.
    duration = 40.0
    sc, pp, cp, prof = make_workload(duration)
    rows, n, sub = pp.shape[0], sc.n_steps, sc.substeps
    shape = (rows, prof.ref.size, len(K.OUT_FIELDS))
    out_nb, out_c = np.empty(shape), np.empty(shape)
    div_nb, div_c = np.empty(rows, np.int64), np.empty(rows, np.int64)
    feas_nb, feas_c = np.empty(rows, np.bool_), np.empty(rows, np.bool_)

    with tempfile.TemporaryDirectory(prefix="ctrlsim_bench_c_") as tmp:
        libs = {name: build_c(tmp, i + 1, flags)
                for i, (name, flags) in enumerate(C_BUILDS.items())}
        for name, lib in libs.items():
            print(f"{name}: {lib.command}")

        # Warm up numba (compile or load from cache) and check equality.
        _, car_pp, car_cp, car_prof = car_workload()
        car = [(np.empty((3, car_prof.ref.size, 5)), np.empty(3, np.int64),
                np.empty(3, np.bool_)) for _ in range(2)]
        run_numba(car_pp, car_cp, car_prof, *car[0])
        for lib in libs.values():
            run_c(lib, car_pp, car_cp, car_prof, *car[1])
            assert np.array_equal(car[0][0], car[1][0], equal_nan=True), "car: C != numba"
        run_numba(pp, cp, prof, out_nb, div_nb, feas_nb)
        assert not (div_nb >= 0).any(), "a row diverged; pick another workload"
        for name, lib in libs.items():
            run_c(lib, pp, cp, prof, out_c, div_c, feas_c)
            assert np.array_equal(div_c, div_nb) and np.array_equal(feas_c, feas_nb)
            diff = np.max(np.abs(out_c[:, -1, 1] - out_nb[:, -1, 1]))
            diff_all = np.nanmax(np.abs(out_c - out_nb))
            print(f"{name} vs numba: max |final speed diff| = {diff:.3g} m/s, "
                  f"max |diff| over all outputs = {diff_all:.3g}")
            assert diff <= FINAL_SPEED_TOL, f"C and numba disagree: {diff}"

        res = ctrlsim.sweep(sc, {"alpha": ALPHAS, "kp": KPS})
        sweep_final = np.array([tr.speed[-1] for tr in res.trajectories])
        assert np.array_equal(sweep_final, out_nb[:, -1, 1]), "sweep and rollout_batch differ"

        # Interleave the variants so load from other processes hits all alike.
        variants = {f"numba rollout_batch, {n_threads} threads": ("nb", n_threads),
                    "numba rollout_batch, 1 thread": ("nb", 1),
                    f"ctrlsim.sweep (+ metrics), {n_threads} thr": ("sweep", None)}
        variants.update({name: ("c", lib) for name, lib in libs.items()})
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(REPEATS):
            for name, (kind, arg) in variants.items():
                if kind == "nb":
                    numba.set_num_threads(arg)
                    times[name].append(
                        timed(lambda: run_numba(pp, cp, prof, out_nb, div_nb, feas_nb)))
                    numba.set_num_threads(n_threads)
                elif kind == "sweep":
                    times[name].append(
                        timed(lambda: ctrlsim.sweep(sc, {"alpha": ALPHAS, "kp": KPS})))
                else:
                    times[name].append(
                        timed(lambda arg=arg: run_c(arg, pp, cp, prof, out_c, div_c, feas_c)))

    work = rows * n * sub
    print(f"\nworkload: {rows} rows x {n} control periods x {sub} RK4 substeps "
          f"= {work / 1e6:.1f} M substeps; best of {REPEATS}")
    best = {name: min(ts) for name, ts in times.items()}
    c_best = min(best[name] for name in C_BUILDS)
    print(f"{'variant':<34} {'best s':>8} {'all runs s':>22} {'M substeps/s':>13} "
          f"{'vs fastest C':>13}")
    for name, ts in times.items():
        runs = " ".join(f"{t:.2f}" for t in ts)
        print(f"{name:<34} {best[name]:8.3f} {runs:>22} {work / best[name] / 1e6:13.2f} "
              f"{c_best / best[name]:12.2f}x")
    ratio = c_best / best[f"numba rollout_batch, {n_threads} threads"]
    verdict = "met" if ratio >= TARGET else "NOT met"
    print(f"\nnumba on {n_threads} threads vs fastest single-thread C: {ratio:.2f}x "
          f"(target >= {TARGET}x: {verdict})")


if __name__ == "__main__":
    main()
