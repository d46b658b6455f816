// Traffic charts: uPlot bars of bytes to and from clients per hour or day,
// with empty periods filled in so gaps read as zero. uPlot is loaded with
// the first chart, not with the console (the sign-in page needs none).

import { useEffect, useRef } from 'preact/hooks';
import 'uplot/dist/uPlot.min.css';

import type { Granularity, UsagePoint } from '../api/types';
import { bytes } from './format';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

/** The usage window that ends now: the last 24 hours or 30 days. */
export function usageWindow(granularity: Granularity): { from: string; to: string } {
  const step = granularity === 'HOUR' ? HOUR : DAY;
  const count = granularity === 'HOUR' ? 24 : 30;
  const end = Math.floor(Date.now() / step) * step + step;
  return { from: new Date(end - count * step).toISOString(), to: new Date(end).toISOString() };
}

function series(points: UsagePoint[], from: string, to: string, granularity: Granularity) {
  const step = granularity === 'HOUR' ? HOUR : DAY;
  const start = Date.parse(from);
  const end = Date.parse(to);
  const byStart = new Map(points.map((p) => [Math.floor(Date.parse(p.periodStart) / step) * step, p]));
  const xs: number[] = [];
  const down: number[] = [];
  const up: number[] = [];
  for (let t = Math.floor(start / step) * step; t < end; t += step) {
    const p = byStart.get(t);
    xs.push(t / 1000);
    down.push(p ? Number(p.bytesDown) : 0);
    up.push(p ? Number(p.bytesUp) : 0);
  }
  return { xs, down, up };
}

function cssVar(name: string, fallback: string): string {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
}

export function UsageChart(props: {
  title: string;
  points: UsagePoint[];
  from: string;
  to: string;
  granularity: Granularity;
}) {
  const box = useRef<HTMLDivElement>(null);
  const { xs, down, up } = series(props.points, props.from, props.to, props.granularity);
  const totalDown = down.reduce((a, b) => a + b, 0);
  const totalUp = up.reduce((a, b) => a + b, 0);
  const key = JSON.stringify([xs, down, up]);

  useEffect(() => {
    let plot: { destroy(): void } | undefined;
    let ro: ResizeObserver | undefined;
    let live = true;
    void import('uplot').then(({ default: uPlot }) => {
      const el = box.current;
      if (!live || !el) return;
      const bars = uPlot.paths.bars?.({ size: [0.7, 40], gap: 1 });
      const downColour = cssVar('--chart-down', '#2563eb');
      const upColour = cssVar('--chart-up', '#f59e0b');
      const axis = { stroke: cssVar('--muted', '#666'), grid: { stroke: cssVar('--grid', '#8882'), width: 1 } };
      const p = new uPlot(
        {
          width: Math.max(200, el.clientWidth),
          height: 180,
          legend: { show: true, live: false },
          cursor: { drag: { x: false, y: false } },
          scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(max, 1000)] } },
          axes: [{ ...axis }, { ...axis, size: 64, values: (_u, ticks) => ticks.map((t) => bytes(t)) }],
          series: [
            {},
            // Filled bars without outlines: empty periods draw nothing.
            { label: 'to clients', stroke: downColour, width: 0, fill: `${downColour}bb`, paths: bars, points: { show: false } },
            { label: 'from clients', stroke: upColour, width: 0, fill: `${upColour}bb`, paths: bars, points: { show: false } },
          ],
        },
        [xs, down, up],
        el,
      );
      plot = p;
      ro = new ResizeObserver(() => p.setSize({ width: Math.max(200, el.clientWidth), height: 180 }));
      ro.observe(el);
    });
    return () => {
      live = false;
      ro?.disconnect();
      plot?.destroy();
    };
  }, [key]);

  return (
    <figure class="chart">
      <figcaption>
        <strong>{props.title}</strong>
        <span class="muted">
          {' '}
          {bytes(totalDown)} to clients · {bytes(totalUp)} from clients
        </span>
      </figcaption>
      <div
        ref={box}
        role="img"
        aria-label={`${props.title}: ${bytes(totalDown)} to clients and ${bytes(totalUp)} from clients`}
      />
    </figure>
  );
}
