/**
 * Live tables for the dashboard: rows keyed by `id`, updated in place from snapshots and updates,
 * moving only forward in each object's `version`; changed rows flash.
 */

/**
 * A table whose rows are keyed by `id` and updated in place.
 *
 * Columns are `{field, text(row), cls?(row), num?, user?, header?}`, or, for a cell that holds
 * controls, `{field, render(cell, row)}` (called again only when `key(row)` changes).
 * `limit` bounds the rows kept, dropping the last in `compare` order first, except rows that
 * `keep(row)` holds on to (open orders are never dropped to make room).
 */
export class LiveTable {
  constructor(table, { columns, compare, rowClass = () => "", limit = Infinity, keep = () => false }) {
    this.table = table;
    this.body = table.tBodies[0];
    this.columns = columns;
    this.compare = compare;
    this.rowClass = rowClass;
    this.limit = limit;
    this.keep = keep;
    this.rows = new Map(); // id -> {data, tr}
    this.removed = new Map(); // id -> the version that deleted it: older states stay out
    this.listeners = new Set();
    this._toggleEmpty();
  }

  /** Call `listener()` after every change of the rows; returns a function that stops it. */
  onChange(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Insert or update a row; ignored unless newer than what is shown. Returns true if shown. */
  upsert(data, { flash = true } = {}) {
    const current = this.rows.get(data.id);
    if (current && !isNewer(data, current.data)) return false;
    const removedAt = this.removed.get(data.id);
    if (removedAt !== undefined && !(data.version > removedAt)) return false;
    let tr;
    if (current) {
      tr = current.tr;
    } else {
      tr = document.createElement("tr");
      tr.dataset.id = String(data.id);
      for (const column of this.columns) {
        const cell = document.createElement(column.header ? "th" : "td");
        if (column.header) cell.scope = "row";
        cell.dataset.field = column.field;
        tr.append(cell);
      }
      this._insert(tr, data);
    }
    this.rows.set(data.id, { data, tr });
    const changed = this._render(tr, data) || !current;
    tr.className = this.rowClass(data);
    if (changed && flash) flashRow(tr);
    this._trim();
    this._changed();
    return true;
  }

  /** Remove a deleted object's row, unless the row is already newer than the deletion. */
  remove(data) {
    const current = this.rows.get(data.id);
    if (current && !isNewer(data, current.data)) return;
    if (data.version !== undefined) this.removed.set(data.id, data.version);
    this._drop(data.id);
    this._changed();
  }

  /** Keep only the rows of `ids` (the objects of a snapshot or a reload: the others are gone). */
  retain(ids) {
    for (const id of [...this.rows.keys()]) if (!ids.has(id)) this._drop(id);
    this._changed();
  }

  /** Render every row again (names or permissions changed), without flashing. */
  refresh() {
    for (const { data, tr } of this.rows.values()) this._render(tr, data);
  }

  clear() {
    this.rows.clear();
    this.removed.clear();
    this.body.replaceChildren();
    this._changed();
  }

  values() {
    return [...this.rows.values()].map((row) => row.data);
  }

  get(id) {
    return this.rows.get(id)?.data;
  }

  /** Fill the row's cells; true if any text changed. */
  _render(tr, data) {
    let changed = false;
    this.columns.forEach((column, index) => {
      const cell = tr.cells[index];
      const className = [column.num && "num", column.user && "col-user", column.cls?.(data)]
        .filter(Boolean)
        .join(" ");
      if (column.render) {
        const key = String(column.key ? column.key(data) : "");
        if (cell.dataset.key !== key || !cell.hasChildNodes()) {
          cell.replaceChildren();
          column.render(cell, data);
          cell.dataset.key = key;
        }
      } else {
        const text = column.text(data);
        if (cell.textContent !== text) {
          cell.textContent = text;
          changed = true;
        }
        const title = column.title?.(data) ?? "";
        if ((cell.title || "") !== title) cell.title = title;
      }
      if (cell.className !== className) cell.className = className;
    });
    return changed;
  }

  _drop(id) {
    const row = this.rows.get(id);
    if (!row) return;
    row.tr.remove();
    this.rows.delete(id);
  }

  _insert(tr, data) {
    for (const row of this.body.rows) {
      const other = this.rows.get(Number(row.dataset.id));
      if (other && this.compare(data, other.data) < 0) {
        this.body.insertBefore(tr, row);
        return;
      }
    }
    this.body.append(tr);
  }

  _trim() {
    if (this.rows.size <= this.limit) return;
    const rows = [...this.body.rows];
    for (let index = rows.length - 1; index >= 0 && this.rows.size > this.limit; index--) {
      const id = Number(rows[index].dataset.id);
      if (!this.keep(this.rows.get(id).data)) this._drop(id);
    }
  }

  _changed() {
    this._toggleEmpty();
    for (const listener of this.listeners) listener();
  }

  _toggleEmpty() {
    this.table.closest(".table-wrap").dataset.empty = String(this.rows.size === 0);
  }
}

/**
 * Whether `data` is a later state of the object than `current`: by `version` (one per committed
 * change), or by `updatedAt` from a server without versions.
 */
export function isNewer(data, current) {
  if (Number.isInteger(data.version) && Number.isInteger(current.version)) {
    return data.version > current.version;
  }
  return !(data.updatedAt && current.updatedAt && current.updatedAt > data.updatedAt);
}

const FLASH_MS = 1400; // as long as dashboard.css's flash animation
const flashTimers = new WeakMap(); // element -> the timer that takes its flash off

/** Flash a changed row, then take the class off again, so that each change flashes anew. */
export function flashRow(element) {
  clearTimeout(flashTimers.get(element));
  element.classList.remove("flash");
  void element.offsetWidth; // restart the animation
  element.classList.add("flash");
  // A timer, not animationend: with reduced motion there is no animation to end.
  flashTimers.set(element, setTimeout(() => element.classList.remove("flash"), FLASH_MS));
}
