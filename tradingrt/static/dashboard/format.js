/**
 * Display formats for the dashboard. Decimals arrive as exact strings (CONTRACT section 1) and
 * are grouped and rounded as strings, so what is shown is what the server computed.
 */

const MINUS = "\u2212";

/**
 * "12345.678900" -> "12,345.6789"; rounded half up to `maxFraction` digits, padded to
 * `minFraction`, with a real minus sign, and "+" for positive values when `signed`.
 * @param {?string} value
 * @param {{minFraction?: number, maxFraction?: number, signed?: boolean}} [options]
 * @returns {string}
 */
export function formatDecimal(value, { minFraction = 0, maxFraction = 8, signed = false } = {}) {
  if (value === null || value === undefined || value === "") return "—";
  const match = /^(-?)(\d+)(?:\.(\d+))?$/.exec(String(value));
  if (!match) return String(value);
  let [, sign, whole, fraction = ""] = match;
  if (fraction.length > maxFraction) {
    let digits = whole + fraction.slice(0, maxFraction);
    if (fraction[maxFraction] >= "5") {
      digits = (BigInt(digits) + 1n).toString().padStart(digits.length, "0");
    }
    whole = digits.slice(0, digits.length - maxFraction) || "0";
    fraction = digits.slice(digits.length - maxFraction);
  }
  fraction = fraction.replace(/0+$/, "").padEnd(minFraction, "0");
  whole = whole.replace(/^0+(?=\d)/, "");
  const zero = /^0*$/.test(whole + fraction);
  const prefix = sign && !zero ? MINUS : signed && !zero ? "+" : "";
  const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  return prefix + grouped + (fraction ? `.${fraction}` : "");
}

/** Money: two decimals. */
export const formatMoney = (value, options = {}) =>
  formatDecimal(value, { minFraction: 2, maxFraction: 2, ...options });

/** Prices: at least two decimals, up to eight. */
export const formatPrice = (value) => formatDecimal(value, { minFraction: 2, maxFraction: 8 });

/** Quantities: as many decimals as they have, up to eight. */
export const formatQuantity = (value) => formatDecimal(value, { maxFraction: 8 });

/**
 * A fraction as a percentage: "0.254" -> "25.4%".
 * @param {?string} value
 */
export function formatPercent(value) {
  if (value === null || value === undefined || value === "") return "—";
  const number = Number(value);
  return Number.isFinite(number) ? `${(number * 100).toFixed(1)}%` : String(value);
}

/**
 * "pos", "neg" or "" for a decimal string, to colour P&L.
 * @param {?string} value
 */
export function signClass(value) {
  if (value === null || value === undefined) return "";
  const text = String(value);
  if (/^-?0*(\.0*)?$/.test(text)) return "";
  return text.startsWith("-") ? "neg" : "pos";
}

/**
 * A timestamp as local time: "14:03:27" today, "25 Nov 14:03" on another day.
 * @param {?string} iso
 */
export function formatTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  const time = date.toLocaleTimeString("en-GB", { hour12: false });
  if (date.toDateString() === new Date().toDateString()) return time;
  const day = date.toLocaleDateString("en-GB", { day: "numeric", month: "short" });
  return `${day} ${time.slice(0, 5)}`;
}

/**
 * The exact sum of decimal strings, as a decimal string: the summary cards add money as the
 * server does, so a card rounds like the rows it adds up ("1.005" is "+1.01" in both).
 * Values that are not decimal strings count as 0.
 * @param {Iterable<?string>} values
 * @returns {string}
 */
export function sum(values) {
  const parsed = [];
  let scale = 0;
  for (const value of values) {
    const match = /^(-?)(\d+)(?:\.(\d+))?$/.exec(String(value ?? ""));
    if (!match) continue;
    const [, sign, whole, fraction = ""] = match;
    parsed.push({ sign, whole, fraction });
    scale = Math.max(scale, fraction.length);
  }
  let total = 0n;
  for (const { sign, whole, fraction } of parsed) {
    const units = BigInt(whole + fraction.padEnd(scale, "0"));
    total += sign ? -units : units;
  }
  const negative = total < 0n;
  const digits = (negative ? -total : total).toString().padStart(scale + 1, "0");
  const whole = digits.slice(0, digits.length - scale);
  const fraction = scale ? `.${digits.slice(digits.length - scale)}` : "";
  return `${negative ? "-" : ""}${whole}${fraction}`;
}
