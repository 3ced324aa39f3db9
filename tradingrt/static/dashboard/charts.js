/**
 * The dashboard's charts, drawn by uPlot (vendored from its npm package): a price chart per
 * symbol, from the MARKET_DATA stream, and the account's P&L over time, from POSITION_UPDATEs.
 * The numbers are floats here because a chart only draws them; tables and cards show the exact
 * decimal strings.
 */

import uPlot from "uplot";

import { formatMoney, formatPrice } from "./format.js";

const MAX_PRICE_POINTS = 1200; // per symbol: several minutes of the simulator's ticks
const MAX_PNL_POINTS = 1200;
const PNL_SAMPLE_MS = 500; // at most two P&L points a second, however fast positions change
const HEIGHT = 220;

const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

function axes(format) {
  const axis = { stroke: css("--muted"), grid: { stroke: css("--line"), width: 1 }, ticks: { stroke: css("--line"), width: 1 } };
  return [
    { ...axis },
    { ...axis, size: labelWidth, values: (_, values) => values.map(format) },
  ];
}

/** A y axis as wide as its longest label (uPlot's own recipe), so "43,500.00" is not cut. */
function labelWidth(plot, values, axisIndex, cycle) {
  const axis = plot.axes[axisIndex];
  if (cycle > 1) return axis._size;
  let size = axis.ticks.size + axis.gap;
  const longest = (values ?? []).reduce((a, b) => (b.length > a.length ? b : a), "");
  if (longest) {
    plot.ctx.font = axis.font[0];
    size += plot.ctx.measureText(longest).width / devicePixelRatio;
  }
  return Math.ceil(size);
}

/**
 * One uPlot in `container`, sized to it (and again whenever it resizes), redrawn at most once
 * per animation frame however many points arrive.
 */
class Chart {
  constructor(container, { series, format }) {
    this.container = container;
    this.data = [[], ...series.map(() => [])];
    this.plot = new uPlot(
      {
        width: Math.max(container.clientWidth, 200),
        height: HEIGHT,
        scales: { x: { time: true, range: timeRange } },
        series: [{}, ...series],
        axes: axes(format),
        legend: { live: false },
        cursor: { drag: { x: false, y: false } },
      },
      this.data,
      container,
    );
    this._frame = 0;
    new ResizeObserver(() => {
      const width = Math.max(this.container.clientWidth, 200);
      if (width !== this.plot.width) this.plot.setSize({ width, height: HEIGHT });
    }).observe(container);
  }

  show(data) {
    this.data = data;
    this.redraw();
  }

  redraw() {
    if (this._frame) return;
    this._frame = requestAnimationFrame(() => {
      this._frame = 0;
      this.plot.setData(this.data);
    });
  }
}

/** uPlot's x range, except that one point (which it widens to years) gets a minute around it. */
function timeRange(plot, min, max) {
  const times = plot.data[0];
  return times.length === 1 ? [times[0] - 30, times[0] + 30] : [min, max];
}

const toFloat = (value) => (value === null || value === undefined ? null : Number(value));
const seconds = (iso) => {
  const ms = iso ? Date.parse(iso) : NaN;
  return (Number.isNaN(ms) ? Date.now() : ms) / 1000;
};

/** The price chart: the ticks of every symbol seen are kept, one symbol is drawn at a time. */
export class PriceChart {
  constructor({ container, picker, summary }) {
    this.picker = picker;
    this.summary = summary;
    this.container = container;
    this.symbols = new Map(); // symbol -> [[t], [last], [bid], [ask]]
    this.selected = null;
    this.chart = new Chart(container, {
      format: (value) => formatPrice(String(value)),
      series: [
        { label: "Last", stroke: css("--accent"), width: 2, value: (_, v) => (v === null ? "—" : formatPrice(String(v))) },
        { label: "Bid", stroke: css("--pos"), width: 1, dash: [4, 4], value: (_, v) => (v === null ? "—" : formatPrice(String(v))) },
        { label: "Ask", stroke: css("--neg"), width: 1, dash: [4, 4], value: (_, v) => (v === null ? "—" : formatPrice(String(v))) },
      ],
    });
    picker.addEventListener("change", () => this.select(picker.value));
    this._describe();
  }

  /** Add a tick of `symbol`; the chart follows the first symbol until the user picks one. */
  tick({ symbol, last, bid, ask, timestamp }) {
    const series = this._series(symbol);
    const t = seconds(timestamp);
    const at = series[0].length;
    if (at && t < series[0][at - 1]) return; // an older tick (a replay): the line only moves on
    series[0].push(t);
    series[1].push(toFloat(last));
    series[2].push(toFloat(bid));
    series[3].push(toFloat(ask));
    if (at + 1 > MAX_PRICE_POINTS) for (const column of series) column.shift();
    if (this.selected === null) this.select(symbol);
    else if (symbol === this.selected) {
      this.chart.redraw();
      this._describe();
    }
  }

  /** Make `symbol` known (a choice in the picker) before its first tick. */
  ensure(symbol) {
    this._series(symbol);
  }

  select(symbol) {
    if (!this.symbols.has(symbol)) return;
    this.selected = symbol;
    this.picker.value = symbol;
    this.chart.show(this.symbols.get(symbol));
    this._describe();
  }

  clear() {
    this.symbols.clear();
    this.selected = null;
    this.picker.replaceChildren();
    this.chart.show([[], [], [], []]);
    this._describe();
  }

  _series(symbol) {
    let series = this.symbols.get(symbol);
    if (!series) {
      series = [[], [], [], []];
      this.symbols.set(symbol, series);
      const option = new Option(symbol, symbol);
      const after = [...this.picker.options].find((other) => other.value > symbol);
      this.picker.insertBefore(option, after || null);
      this.picker.disabled = false;
      if (this.selected !== null) this.picker.value = this.selected;
    }
    return series;
  }

  _describe() {
    const series = this.selected && this.symbols.get(this.selected);
    const count = series ? series[0].length : 0;
    this.picker.disabled = this.symbols.size === 0;
    this.container.dataset.points = String(count);
    const text = !series
      ? "No market data yet."
      : count === 0
        ? `${this.selected}: no ticks yet.`
        : `${this.selected}: last ${formatPrice(String(series[1][count - 1]))}, ${count} tick${count === 1 ? "" : "s"} shown.`;
    this.summary.textContent = text;
    this.container.setAttribute("aria-label", `Price chart. ${text}`);
  }
}

/**
 * The account's P&L over time: total, unrealized and realized, sampled from the positions
 * whenever they change (at most every PNL_SAMPLE_MS), so it moves with fills and ticks alike.
 */
export class PnlChart {
  constructor({ container, summary, read }) {
    this.container = container;
    this.summary = summary;
    this.read = read; // () => {total, unrealized, realized} as decimal strings
    this.data = [[], [], [], []];
    this._timer = null;
    this._lastSample = 0;
    const money = (_, v) => (v === null ? "—" : formatMoney(String(v.toFixed(2)), { signed: true }));
    this.chart = new Chart(container, {
      format: (value) => formatMoney(value.toFixed(2)),
      series: [
        { label: "Total", stroke: css("--accent"), width: 2, value: money },
        { label: "Unrealized", stroke: css("--warn"), width: 1, value: money },
        { label: "Realized", stroke: css("--pos"), width: 1, value: money },
      ],
    });
    this._describe();
  }

  /** The positions changed: take a sample now, or when the interval since the last one ends. */
  changed() {
    if (this._timer !== null) return;
    const wait = Math.max(0, this._lastSample + PNL_SAMPLE_MS - Date.now());
    this._timer = setTimeout(() => {
      this._timer = null;
      this._sample();
    }, wait);
  }

  clear() {
    clearTimeout(this._timer);
    this._timer = null;
    this.data = [[], [], [], []];
    this.chart.show(this.data);
    this._describe();
  }

  _sample() {
    this._lastSample = Date.now();
    const { total, unrealized, realized } = this.read();
    const values = [Date.now() / 1000, Number(total), Number(unrealized), Number(realized)];
    const last = this.data[0].length - 1;
    const same = (at) => at >= 0 && values.slice(1).every((v, index) => v === this.data[index + 1][at]);
    if (same(last) && same(last - 1)) {
      this.data[0][last] = values[0]; // a flat stretch: extend it instead of adding points
    } else {
      values.forEach((value, index) => this.data[index].push(value));
      if (this.data[0].length > MAX_PNL_POINTS) for (const column of this.data) column.shift();
    }
    this.chart.show(this.data);
    this._describe(total);
  }

  _describe(total = null) {
    const count = this.data[0].length;
    this.container.dataset.points = String(count);
    const text =
      total === null
        ? "No P&L yet."
        : `Total P&L ${formatMoney(total, { signed: true })}, ${count} point${count === 1 ? "" : "s"} shown.`;
    this.summary.textContent = text;
    this.container.setAttribute("aria-label", `P&L over time. ${text}`);
  }
}
