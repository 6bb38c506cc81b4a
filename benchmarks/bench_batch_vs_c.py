"""Batch rollouts: numba ``rollout_batch`` on all cores vs the same loop in C on one.

The C below is a line-by-line translation of ``ctrlsim.kernels`` (plant RK4
substeps, actuator lag, grade interpolation, events, the digital PID-family
loop with its activation, clipping and anti-windup). It is compiled with gcc
at run time into a temporary directory and called through ctypes, single
threaded. Both versions run the same 256 parameter sets of a robot scenario
and must produce bit-identical outputs before any time is reported. The C
follows Kernel v2: the branch-free ``_tanh`` (Cody-Waite reduction, a Pade
approximant of exp in fused multiply-adds, C's ``fma``; exact +-1 beyond |x| = 19.1), the
grade's sine and cosine by fdlibm's kernel polynomials (``_sincos``),
``v * (1/0.1)``, ``(f_target - f) * inv_tau``, anti-windup ``z += Ts*(e +
(kaw/ki)*(phi_inv(a) - s))``, and the road-piece / event-window caches kept across control periods.

Then the lockstep batch at scale: 4096 vehicles, 5 RK4 substeps per 0.05 s
control period, 20 s, on 2 threads and on 1 (``numba.set_num_threads``), on
the hilly road and on a flat one.

Throughput is RK4 substeps per second: rows * N * substeps / seconds; an
env-step is one control period of one vehicle.

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
from ctrlsim.sweep import pack_controllers

TARGET = 1.5          # numba on all cores vs single-thread C
TARGET_SUBSTEPS = 250e6   # lockstep batch, 4096 vehicles, RK4 substeps/s on 2 threads
TARGET_SCALING = 1.8      # 2 threads vs 1, same batch
REPEATS = 3           # best-of
# The 4096-row lockstep runs take ~0.1 s: best of 7, since on the shared
# machine a single 2-thread run was up to 1.6x slower than the best.
LOCKSTEP_REPEATS = 7
DURATION = 40.0       # s, the batch-vs-C workload (10 ms, 10 substeps, 256 rows)
BIG_DURATION = 20.0   # s, the 4096-vehicle lockstep workload (50 ms, 5 substeps)

C_SOURCE = r"""
#include <math.h>
#include <stdint.h>

enum { P_KIND, P_MASS, P_G, P_CR, P_DLIN, P_DQUAD, P_TAU, P_CMD_LO, P_CMD_HI,
       P_GEAR_RATIO, P_TMAX, P_WMAX, P_BETA, P_BRAKE, N_PLANT };
/* Controller vector: header (law, integrate, aw_gain, aw_slope), then the
   piecewise-linear PID family's gains. */
enum { C_LAW, C_INTEGRATE, C_AW_GAIN, C_SLOPE, C_KP, C_KI, C_KD, C_FF };
#define KIND_CAR 1.0
#define INV_V_ROLL (1.0 / 0.1)
#define STAGE_EPS 1e-9
#define N_OUT 5

static const double LN2_HI = 6.93147180369123816490e-01;
static const double LN2_LO = 1.90821492927058770002e-10;

typedef struct {
    const double *gx, *gth; long ng; int by_time;
    const double *ev; long nev;
} Profile;

/* Python's max/min on two floats, as numba lowers them. */
static inline double py_max(double a, double b) { return b > a ? b : a; }
static inline double py_min(double a, double b) { return b < a ? b : a; }

/* kernels._tanh: 2|x| = k ln2 + r by Cody-Waite reduction, exp(r) by its [6/6] Pade
   approximant (E + O)/(E - O), then ((2^k-1)E + (2^k+1)O) / ((2^k+1)E + (2^k-1)O)
   with fma on the larger products; exact +-1 for |x| > 19.1. The test for that is the
   scalar code's (kernels._sign); the kernel's vectorised loops clamp 2|x| to 40 instead,
   where the quotient is exactly 1: the same bits. */
static inline double k_tanh(double x) {
    if (x != x) return x;
    double y = 2.0 * fabs(x);
    if (y > 38.2) return copysign(1.0, x);
    double kf = floor(fma(y, 1.0 / 0.6931471805599453, 0.5));
    double r = fma(-kf, LN2_LO, fma(-kf, LN2_HI, y));
    double z = r * r;
    double e1 = z * fma(z, fma(z, 1.0 / 665280, 1.0 / 792), 5.0 / 44);
    double o = r * fma(z, fma(z, 1.0 / 15840, 1.0 / 66), 1.0 / 2);
    double two_k = (double)((int64_t)1 << (int64_t)kf);
    double km1 = two_k - 1.0, kp1 = two_k + 1.0;
    return copysign((km1 + fma(kp1, o, km1 * e1)) / (kp1 + fma(km1, o, kp1 * e1)), x);
}

/* kernels._sincos: fdlibm's kernel polynomials on |x|, or on pi/2 - |x| with
   sine and cosine swapped above pi/4 (grades are within +-pi/2). */
static inline void k_sincos(double x, double *sn, double *cs) {
    double ax = fabs(x);
    int swap = ax > 0.7853981633974483;
    double r = swap ? (1.57079632673412561417e+00 - ax) + 6.07710050650619224932e-11 : ax;
    double z = r * r;
    double s = r + (z * r) * (-1.66666666666666324348e-01 + z * (8.33333333332248946124e-03
               + z * (-1.98412698298579493134e-04 + z * (2.75573137070700676789e-06
               + z * (-2.50507602534068634195e-08 + z * 1.58969099521155010221e-10)))));
    double q = z * (4.16666666666666019037e-02 + z * (-1.38888888888741095749e-03
               + z * (2.48015872894767294178e-05 + z * (-2.75573143513906633035e-07
               + z * (2.08757232129817482790e-09 + z * -1.13596475577881948265e-11)))));
    double hz = 0.5 * z, w = 1.0 - hz;
    double c = w + (((1.0 - w) - hz) + z * q);
    *sn = copysign(swap ? c : s, x);
    *cs = swap ? s : c;
}

/* kernels.road_segment: the linear road piece [lo, hi) containing x. */
static void road_segment(double x, const Profile *pr, double *lo, double *hi,
                         double *th_lo, double *slope) {
    long n = pr->ng;
    const double *gx = pr->gx, *gth = pr->gth;
    if (n == 0) { *lo = -INFINITY; *hi = INFINITY; *th_lo = 0.0; *slope = 0.0; return; }
    if (isnan(x)) { *lo = x; *hi = x; *th_lo = x; *slope = 0.0; return; }
    if (x < gx[0]) { *lo = -INFINITY; *hi = gx[0]; *th_lo = gth[0]; *slope = 0.0; return; }
    if (x >= gx[n - 1]) {
        *lo = gx[n - 1]; *hi = INFINITY; *th_lo = gth[n - 1]; *slope = 0.0; return;
    }
    long i = 1;
    while (gx[i] <= x) i++;
    *lo = gx[i - 1]; *hi = gx[i]; *th_lo = gth[i - 1];
    *slope = (gth[i] - gth[i - 1]) / (gx[i] - gx[i - 1]);
}

/* kernels.event_window: payload and force at t, and the window where they hold. */
static void event_window(double t, const Profile *pr, double *lo_, double *hi_,
                         double *payload, double *force) {
    double lo = -INFINITY, hi = INFINITY, pl = 0.0, fo = 0.0;
    for (long j = 0; j < pr->nev; j++) {
        const double *e = pr->ev + 4 * j;
        if (e[0] <= t && t < e[1]) {
            fo += e[2]; pl += e[3];
            lo = py_max(lo, e[0]); hi = py_min(hi, e[1]);
        } else if (t < e[0]) {
            hi = py_min(hi, e[0]);
        } else {
            lo = py_max(lo, e[1]);
        }
    }
    *lo_ = lo; *hi_ = hi; *payload = pl; *force = fo;
}

static inline double actuator(double a, double v, const double *pp) {
    if (pp[P_KIND] == KIND_CAR) {
        if (a >= 0.0) {
            double gr = pp[P_GEAR_RATIO];
            double x = gr * v / pp[P_WMAX] - 1.0;
            double torque = py_max(pp[P_TMAX] * (1.0 - pp[P_BETA] * x * x), 0.0);
            return gr * torque * a;
        }
        return pp[P_BRAKE] * a * k_tanh(v * INV_V_ROLL);
    }
    return a;
}

static inline double resistance(double v, double m, double cos_th, const double *pp) {
    return pp[P_CR] * m * pp[P_G] * cos_th * k_tanh(v * INV_V_ROLL) + pp[P_DLIN] * v
           + pp[P_DQUAD] * v * fabs(v);
}

/* Road piece (lo, hi, theta_lo, slope, sin, cos of theta_lo) and event window
   (lo, hi, payload, force), kept across control periods as in the kernel. */
typedef struct { double r_lo, r_hi, th_lo, slope, sn0, cs0, e_lo, e_hi, payload, f_ext; } Cache;

static void plant_interval(double *p_, double *v_, double *f_, double a, double t0,
                           double dt, long substeps, const double *pp,
                           const Profile *pr, Cache *cc) {
    double p = *p_, v = *v_, f = *f_;
    int lag = pp[P_TAU] > 0.0;
    double inv_tau = lag ? 1.0 / pp[P_TAU] : 0.0;
    double h = dt / substeps;
    double hh = 0.5 * h, h6 = h / 6.0, eps = STAGE_EPS * h;
    Cache c_ = *cc;
    for (long j = 0; j < substeps; j++) {
        double ta = t0 + j * h;
        double sp = p, sv = v, sf = f;
        double acc_p = 0.0, acc_v = 0.0, acc_f = 0.0;
        for (int c = 0; c < 4; c++) {
            double ts = c == 0 ? ta + eps : (c == 3 ? ta + h - eps : ta + hh);
            double x = pr->by_time ? ts : sp;
            double sn, cs;
            if (!(c_.r_lo <= x && x < c_.r_hi)) {
                road_segment(x, pr, &c_.r_lo, &c_.r_hi, &c_.th_lo, &c_.slope);
                k_sincos(c_.th_lo, &c_.sn0, &c_.cs0);
            }
            if (c_.slope == 0.0) {
                sn = c_.sn0; cs = c_.cs0;
            } else {
                double th = c_.th_lo + c_.slope * (x - c_.r_lo);
                k_sincos(th, &sn, &cs);
            }
            if (!(c_.e_lo <= ts && ts < c_.e_hi))
                event_window(ts, pr, &c_.e_lo, &c_.e_hi, &c_.payload, &c_.f_ext);
            double m = pp[P_MASS] + c_.payload;
            double f_target = actuator(a, sv, pp);
            double force = lag ? sf : f_target;
            double dfv = lag ? (f_target - sf) * inv_tau : 0.0;
            double inv_m = 1.0 / m;
            double dvv = ((force + (c_.f_ext - m * pp[P_G] * sn))
                          - resistance(sv, m, cs, pp)) * inv_m;
            double dpv = sv;
            if (c == 0) {
                acc_p = dpv; acc_v = dvv; acc_f = dfv;
            } else {
                double w = c == 3 ? 1.0 : 2.0;
                acc_p += w * dpv; acc_v += w * dvv; acc_f += w * dfv;
            }
            double step = c == 2 ? h : hh;
            sp = p + step * dpv; sv = v + step * dvv; sf = f + step * dfv;
        }
        p += h6 * acc_p;
        v += h6 * acc_v;
        f += h6 * acc_f;
    }
    *cc = c_;
    *p_ = p; *v_ = v; *f_ = f;
}

static double equilibrium_command(double v0, const double *pp, const Profile *pr,
                                  int *feasible) {
    double lo_, hi_, th, slope, elo, ehi, payload, f_ext, a0;
    road_segment(0.0, pr, &lo_, &hi_, &th, &slope);
    event_window(0.0, pr, &elo, &ehi, &payload, &f_ext);
    double m = pp[P_MASS] + payload;
    double sn, cs;
    k_sincos(th, &sn, &cs);
    double f_req = resistance(v0, m, cs, pp) + m * pp[P_G] * sn - f_ext;
    double unit = f_req >= 0.0 ? 1.0 : -1.0;
    double gain = unit * actuator(unit, v0, pp);
    if (gain > 0.0)
        a0 = f_req / gain;
    else
        a0 = f_req == 0.0 ? 0.0 : unit * INFINITY;
    double lo = pp[P_CMD_LO], hi = pp[P_CMD_HI];
    *feasible = lo <= a0 && a0 <= hi;
    return py_min(py_max(a0, lo), hi);
}

static inline double phi_inv(double a, double alpha) {
    return (a < 0.0 && alpha > 0.0) ? a / alpha : a;
}

static long rollout(const double *pp, const double *cp, double v0, const double *ref,
                    const double *noise, long n1, double ts, long substeps,
                    const Profile *pr, double v_limit, double *out, int *feasible) {
    long n = n1 - 1;
    double lo = pp[P_CMD_LO], hi = pp[P_CMD_HI];
    double ki = cp[C_KI], alpha = cp[C_SLOPE];
    int lag = pp[P_TAU] > 0.0;
    /* initial_state: equilibrium command, controller_preload, actuator force */
    double a0 = equilibrium_command(v0, pp, pr, feasible);
    double s0 = phi_inv(a0, alpha);
    double z = ki != 0.0 ? (s0 - cp[C_FF] * v0) / ki : 0.0;
    double u0 = s0 >= 0.0 ? s0 : alpha * s0;
    double f = actuator(py_min(py_max(u0, lo), hi), v0, pp);
    double p = 0.0, v = v0, e = 0.0;
    Cache cache = {0.0, -INFINITY, 0.0, 0.0, 0.0, 0.0, 0.0, -INFINITY, 0.0, 0.0};
    for (long k = 0; k <= n; k++) {
        /* control_step */
        double e_prev = e;
        e = ref[k] - (v + noise[k]);
        double d = k == 0 ? 0.0 : (e - e_prev) * (1.0 / ts);
        double s = cp[C_KP] * e + cp[C_KI] * z + cp[C_KD] * d + cp[C_FF] * ref[k];
        double u = s >= 0.0 ? s : alpha * s;
        double a = py_min(py_max(u, lo), hi);
        if (cp[C_INTEGRATE] != 0.0)
            z = z + ts * (e + cp[C_AW_GAIN] * (phi_inv(a, alpha) - s));
        if (!(isfinite(u) && isfinite(z))) {
            for (long i = k * N_OUT; i < n1 * N_OUT; i++) out[i] = NAN;
            return k;
        }
        double *row = out + k * N_OUT;
        row[0] = p;
        row[1] = v;
        row[2] = lag ? f : actuator(a, v, pp);
        row[3] = u;
        row[4] = a;
        if (k == n) break;
        plant_interval(&p, &v, &f, a, k * ts, ts, substeps, pp, pr, &cache);
        if (!(isfinite(p) && isfinite(v) && isfinite(f) && fabs(v) <= v_limit)) {
            for (long i = (k + 1) * N_OUT; i < n1 * N_OUT; i++) out[i] = NAN;
            return k + 1;
        }
    }
    return -1;
}

void rollout_batch(long b, const double *pp, const double *cp, long n_ctrl, double v0,
                   const double *ref, const double *noise, long n1, double ts,
                   long substeps, const double *gx, const double *gth, long ng,
                   int by_time, const double *ev, long nev, double v_limit,
                   double *out, long *diverged_at, unsigned char *feasible) {
    Profile pr = {gx, gth, ng, by_time, ev, nev};
    for (long i = 0; i < b; i++) {
        int feas;
        diverged_at[i] = rollout(pp + i * N_PLANT, cp + i * n_ctrl, v0, ref, noise, n1,
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
        ctypes.c_long, arr, arr, ctypes.c_long, dbl, arr, arr, ctypes.c_long, dbl,
        ctypes.c_long,
        arr, arr, ctypes.c_long, ctypes.c_int, arr, ctypes.c_long, dbl, arr,
        np.ctypeslib.ndpointer(dtype=np.int64, flags="C_CONTIGUOUS"),
        np.ctypeslib.ndpointer(dtype=np.uint8, flags="C_CONTIGUOUS"),
    ]
    lib.command = " ".join(cmd)
    return lib


ALPHAS = np.linspace(0.0, 1.0, 16)
KPS = np.linspace(40.0, 160.0, 16)   # N/(m/s)


HILLS = Road(((5.0, 0.0), (15.0, -3.0), (40.0, -3.0), (50.0, 2.0)))


def make_workload(duration: float, ts: float = 0.01, substeps: int = 10,
                  alphas=ALPHAS, kps=KPS, road: Road = HILLS):
    """A robot scenario with a grade, a payload event and a set-speed change,
    and one row per (alpha, kp) pair (C order as in :func:`ctrlsim.sweep`)."""
    sc = Scenario(reference=Reference([(0.0, 2.0), (duration / 2, 1.0)]),
                  duration=duration, control_period=ts, substeps=substeps,
                  initial_speed=1.0, plant=make_plant("robot"), road=road,
                  events=(Event(at=duration / 4, payload=5.0),))
    base = sc.resolved_controller()
    ctls = [LeakyReLUController(alpha=alpha, kp=kp, ki=base.ki, kd=base.kd, kaw=base.kaw,
                                feedforward=base.feedforward)
            for alpha in alphas for kp in kps]
    pp = np.array([sc.plant.pack()] * len(ctls))
    return sc, pp, pack_controllers(ctls), sc.pack()


def car_workload():
    """A short car run with a hill and a speed decrease (throttle and brake),
    only to check that the C car actuator matches the kernel too."""
    sc = Scenario(reference=Reference([(0.0, 20.0), (10.0, 15.0)]), duration=20.0,
                  control_period=0.01, substeps=2, initial_speed=20.0,
                  plant=make_plant("car"), road=Road(((0.0, 0.0), (100.0, 4.0)), by="position"))
    ctls = [ctrlsim.controller(spec).resolve(None, "car")
            for spec in ("relu", "leaky:0.3", "linear,kaw=0")]
    pp = np.array([sc.plant.pack()] * len(ctls))
    return sc, pp, pack_controllers(ctls), sc.pack()


def outputs(prof, rows):
    """Output arrays for ``rows`` runs: (out, diverged_at, feasible)."""
    return (np.empty((rows, prof.ref.size, len(K.OUT_FIELDS))), np.empty(rows, np.int64),
            np.empty(rows, np.bool_))


def run_numba(pp, cp, prof, out, div, feas):
    K.rollout_batch(pp, cp, prof, out, div, feas)


def run_c(lib, pp, cp, prof, out, div, feas):
    lib.rollout_batch(pp.shape[0], pp, cp, cp.shape[1], prof.v0, prof.ref, prof.noise,
                      prof.ref.size, prof.ts, prof.substeps, prof.grade_x, prof.grade_th,
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


def check_c(name, lib, pp, cp, prof, ref):
    """Run the C build on a workload and compare with the numba outputs ``ref``."""
    out, div, feas = outputs(prof, pp.shape[0])
    run_c(lib, pp, cp, prof, out, div, feas)
    assert np.array_equal(div, ref[1]) and np.array_equal(feas, ref[2]), f"{name}: flags"
    diff = float(np.max(np.abs(out[:, -1, 1] - ref[0][:, -1, 1])))
    diff_all = float(np.nanmax(np.abs(out - ref[0])))
    same = np.array_equal(out, ref[0], equal_nan=True)
    assert same, (f"{name} and numba are not bit-identical (max |final speed diff| "
                  f"{diff:.3g}, max |diff| {diff_all:.3g})")
    return diff, diff_all


def interleaved(variants: dict, repeats: int) -> dict[str, list[float]]:
    """Time each ``(threads, fn)`` variant ``repeats`` times, round-robin."""
    n_threads = numba.get_num_threads()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (threads, fn) in variants.items():
            numba.set_num_threads(threads or n_threads)
            try:
                times[name].append(timed(fn))
            finally:
                numba.set_num_threads(n_threads)
    return times


def lockstep_table(times: dict, work: int, steps: int, scale: dict | None = None) -> None:
    """Markdown table of lockstep timings: ``work`` RK4 substeps and ``steps``
    env-steps per run; ``scale`` multiplies a variant's times (a C slice timed
    for a fraction of the rows)."""
    print("| variant | best s | all runs s | M RK4 substeps/s | M env-steps/s |")
    print("|---|---:|---|---:|---:|")
    for name, ts in times.items():
        ts = [t * (scale or {}).get(name, 1.0) for t in ts]
        runs = " ".join(f"{t:.3f}" for t in ts)
        print(f"| {name} | {min(ts):.3f} | {runs} | {work / min(ts) / 1e6:.1f} | "
              f"{steps / min(ts) / 1e6:.2f} |")


def lockstep_4096(libs, n_threads: int) -> None:
    """The issue's measurement: 4096 vehicles, 5 RK4 substeps per 0.05 s period."""
    alphas = np.linspace(0.0, 1.0, 64)
    kps = np.linspace(20.0, 160.0, 64)
    sc, pp, cp, prof = make_workload(BIG_DURATION, ts=0.05, substeps=5, alphas=alphas,
                                     kps=kps)
    rows, n, sub = pp.shape[0], sc.n_steps, sc.substeps
    res = outputs(prof, rows)
    run_numba(pp, cp, prof, *res)   # warm-up (compiled above already)
    assert not (res[1] >= 0).any(), "a row diverged; pick another workload"
    # Lockstep batch == the single-run kernel, bit for bit (a sample of rows).
    for i in np.linspace(0, rows - 1, 9).astype(int):
        single = np.empty((prof.ref.size, len(K.OUT_FIELDS)))
        assert K.rollout(pp[i], cp[i], prof, single)[0] == -1
        assert np.array_equal(single, res[0][i]), f"row {i}: rollout_batch != rollout"
    c_name, c_lib = list(libs.items())[-1]
    check_c(c_name, c_lib, pp[:64], cp[:64], prof,
            tuple(r[:64] for r in res))
    c_rows = 512   # C is single-threaded and linear in rows: time a slice, scale up
    c_res = outputs(prof, c_rows)
    variants = {
        f"numba rollout_batch, {n_threads} threads": (n_threads,
                                                       lambda: run_numba(pp, cp, prof, *res)),
        "numba rollout_batch, 1 thread": (1, lambda: run_numba(pp, cp, prof, *res)),
        f"{c_name} (1 thread, {c_rows} rows x {rows // c_rows})": (
            None, lambda: run_c(c_lib, pp[:c_rows], cp[:c_rows], prof, *c_res)),
    }
    times = interleaved(variants, LOCKSTEP_REPEATS)
    best = {name: min(ts) for name, ts in times.items()}
    c_key = list(variants)[-1]
    best[c_key] *= rows / c_rows
    work, steps = rows * n * sub, rows * n
    print(f"\n## Lockstep batch: {rows} vehicles, {sub} RK4 substeps per "
          f"{sc.control_period:g} s control period, {sc.duration:g} s robot scenario\n")
    print(f"{rows} rows (64 alphas x 64 kp) x {n} control periods x {sub} substeps = "
          f"{work / 1e6:.1f} M substeps = {steps / 1e6:.2f} M env-steps (vehicle control "
          f"periods); best of {LOCKSTEP_REPEATS}, variants interleaved; grade profile, payload "
          "event, set-speed change; outputs written for every period.\n")
    lockstep_table(times, work, steps, {c_key: rows / c_rows})
    two, one = best[list(variants)[0]], best[list(variants)[1]]
    rate = work / two / 1e6
    print(f"\n- M RK4 substeps/s on {n_threads} threads: {rate:.1f} (target >= "
          f"{TARGET_SUBSTEPS / 1e6:g}: {'met' if rate * 1e6 >= TARGET_SUBSTEPS else 'NOT met'})")
    print(f"- M env-steps/s on {n_threads} threads: {steps / two / 1e6:.2f}")
    scaling = one / two
    print(f"- 1 -> {n_threads} thread scaling: {scaling:.2f}x (target >= {TARGET_SCALING}x: "
          f"{'met' if scaling >= TARGET_SCALING else 'NOT met'})")
    print(f"- numba {n_threads} threads vs {c_name} single thread: "
          f"{best[c_key] / two:.2f}x")
    flat_road(alphas, kps, n_threads)


def flat_road(alphas, kps, n_threads: int) -> None:
    """The same 4096 rows on a flat road (the env's default): every control
    period then has held inputs, the batch's fast path."""
    sc, pp, cp, prof = make_workload(BIG_DURATION, ts=0.05, substeps=5, alphas=alphas,
                                     kps=kps, road=Road())
    rows, n, sub = pp.shape[0], sc.n_steps, sc.substeps
    res = outputs(prof, rows)
    run_numba(pp, cp, prof, *res)
    single = np.empty((prof.ref.size, len(K.OUT_FIELDS)))
    assert K.rollout(pp[rows // 3], cp[rows // 3], prof, single)[0] == -1
    assert np.array_equal(single, res[0][rows // 3]), "flat road: rollout_batch != rollout"
    variants = {
        f"numba rollout_batch, {n_threads} threads": (n_threads,
                                                       lambda: run_numba(pp, cp, prof, *res)),
        "numba rollout_batch, 1 thread": (1, lambda: run_numba(pp, cp, prof, *res)),
    }
    times = interleaved(variants, LOCKSTEP_REPEATS)
    work = rows * n * sub
    print(f"\n### The same {rows} rows on a flat road (payload event and set-speed change "
          f"kept; best of {LOCKSTEP_REPEATS})\n")
    lockstep_table(times, work, rows * n)
    two, one = (min(ts) for ts in times.values())
    rate = work / two / 1e6
    print(f"\n- flat road, M RK4 substeps/s on {n_threads} threads: {rate:.1f} (target >= "
          f"{TARGET_SUBSTEPS / 1e6:g}: {'met' if rate * 1e6 >= TARGET_SUBSTEPS else 'NOT met'})"
          f"; 1 -> {n_threads} threads {one / two:.2f}x")


def main() -> None:
    if shutil.which("gcc") is None:
        sys.exit("gcc not found")
    n_threads = numba.get_num_threads()
    print(f"ctrlsim {ctrlsim.__version__}, numba {numba.__version__}, "
          f"numpy {np.__version__}, {os.cpu_count()} CPUs ({cpu_model()}), "
          f"numba threads {n_threads}")

    sc, pp, cp, prof = make_workload(DURATION)
    rows, n, sub = pp.shape[0], sc.n_steps, sc.substeps
    res_nb, res_c = outputs(prof, rows), outputs(prof, rows)

    with tempfile.TemporaryDirectory(prefix="ctrlsim_bench_c_") as tmp:
        libs = {name: build_c(tmp, i + 1, flags)
                for i, (name, flags) in enumerate(C_BUILDS.items())}
        for name, lib in libs.items():
            print(f"{name}: `{lib.command}`")

        # Warm up numba (compile or load from cache) and check equality.
        _, car_pp, car_cp, car_prof = car_workload()
        car_nb = outputs(car_prof, 3)
        run_numba(car_pp, car_cp, car_prof, *car_nb)
        run_numba(pp, cp, prof, *res_nb)
        assert not (res_nb[1] >= 0).any(), "a row diverged; pick another workload"
        for name, lib in libs.items():
            check_c(name, lib, car_pp, car_cp, car_prof, car_nb)
            diff, diff_all = check_c(name, lib, pp, cp, prof, res_nb)
            print(f"{name} vs numba (robot, {rows} rows, and car, 3 rows): bit-identical "
                  f"(max |final speed diff| = {diff:.3g} m/s, max |diff| = {diff_all:.3g})")

        res = ctrlsim.sweep(sc, {"alpha": ALPHAS, "kp": KPS}, keep_trajectories=True)
        sweep_final = np.array([tr.speed[-1] for tr in res.trajectories])
        assert np.array_equal(sweep_final, res_nb[0][:, -1, 1]), "sweep != rollout_batch"

        variants = {
            f"numba rollout_batch, {n_threads} threads": (
                n_threads, lambda: run_numba(pp, cp, prof, *res_nb)),
            "numba rollout_batch, 1 thread": (1, lambda: run_numba(pp, cp, prof, *res_nb)),
            f"ctrlsim.sweep (+ metrics), {n_threads} thr": (
                n_threads, lambda: ctrlsim.sweep(sc, {"alpha": ALPHAS, "kp": KPS})),
        }
        variants.update({name: (None, lambda lib=lib: run_c(lib, pp, cp, prof, *res_c))
                         for name, lib in libs.items()})
        times = interleaved(variants, REPEATS)

        work = rows * n * sub
        print(f"\n## Batch rollouts vs C: {rows} rows x {n} control periods x {sub} RK4 "
              f"substeps = {work / 1e6:.1f} M substeps\n")
        print(f"Robot, {sc.duration:g} s at {sc.control_period * 1e3:g} ms, grade profile, "
              f"payload event, set-speed change; best of {REPEATS}, variants interleaved.\n")
        best = {name: min(ts) for name, ts in times.items()}
        c_best = min(best[name] for name in C_BUILDS)
        print("| variant | best s | all runs s | M substeps/s | vs fastest C |")
        print("|---|---:|---|---:|---:|")
        for name, ts in times.items():
            runs = " ".join(f"{t:.2f}" for t in ts)
            print(f"| {name} | {best[name]:.3f} | {runs} | {work / best[name] / 1e6:.2f} | "
                  f"{c_best / best[name]:.2f}x |")
        ratio = c_best / best[f"numba rollout_batch, {n_threads} threads"]
        verdict = "met" if ratio >= TARGET else "NOT met"
        print(f"\n- numba on {n_threads} threads vs fastest single-thread C: {ratio:.2f}x "
              f"(target >= {TARGET}x: {verdict})")

        lockstep_4096(libs, n_threads)


if __name__ == "__main__":
    main()
