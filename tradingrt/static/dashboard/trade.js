/**
 * Trading from the dashboard: the order form (POST /api/orders/) and the Cancel buttons of open
 * orders (POST /api/orders/{id}/cancel/). The API validates; its messages are shown next to the
 * fields they name. Nothing here touches the tables: the order appears, and changes, through
 * the WebSocket like every other change.
 */

import { ApiError } from "./session.js";

const PRICED_TYPES = new Set(["LIMIT", "STOP_LIMIT"]);
const STOP_TYPES = new Set(["STOP", "STOP_LIMIT"]);
const CLOSED_STRATEGIES = new Set(["STOPPED", "ERROR"]);
const NON_FIELD = ["non_field_errors", "detail"];

/** The order form: builds the request from the fields, shows the API's answer. */
export class OrderForm {
  /**
   * @param {HTMLFormElement} form
   * @param {{api: (path: string, options: object) => Promise<object>, log: Function}} options
   */
  constructor(form, { api, log }) {
    this.form = form;
    this.api = api;
    this.log = log;
    this.status = form.querySelector("[data-form-status]");
    this.typeField = form.elements.orderType;
    this.typeField.addEventListener("change", () => this._showPriceFields());
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this._showPriceFields();
  }

  /** The strategies the user may place orders for: their own, unless stopped or in error. */
  setStrategies(strategies) {
    const select = this.form.elements.strategyId;
    const chosen = select.value;
    const options = strategies
      .filter((strategy) => !CLOSED_STRATEGIES.has(strategy.status))
      .sort((a, b) => a.name.localeCompare(b.name) || a.id - b.id)
      .map((strategy) => new Option(`${strategy.name} (${strategy.status.toLowerCase()})`, String(strategy.id)));
    select.replaceChildren(new Option("None", ""), ...options);
    select.value = [...select.options].some((option) => option.value === chosen) ? chosen : "";
  }

  /** Symbols to suggest (the ticker's). */
  setSymbols(symbols) {
    const list = this.form.querySelector("datalist");
    list.replaceChildren(...[...symbols].sort().map((symbol) => new Option(symbol)));
  }

  body() {
    const value = (name) => this.form.elements[name].value.trim();
    const type = value("orderType");
    const body = {
      symbol: value("symbol"),
      side: this.form.elements.side.value,
      orderType: type,
      quantity: value("quantity"),
    };
    if (PRICED_TYPES.has(type)) body.price = value("price") || null;
    if (STOP_TYPES.has(type)) body.stopPrice = value("stopPrice") || null;
    if (value("strategyId")) body.strategyId = Number(value("strategyId"));
    return body;
  }

  async submit() {
    const button = this.form.querySelector("button[type=submit]");
    this.clearErrors();
    this._say("Placing…", "");
    button.disabled = true;
    const body = this.body();
    try {
      const order = await this.api("/api/orders/", { method: "POST", body });
      this._say(`Order #${order.id} placed: ${order.side} ${order.quantity} ${order.symbol}.`, "ok");
      this.log(`Placed order #${order.id}`, "ok");
      this.form.elements.quantity.value = "";
    } catch (error) {
      this.showErrors(error);
    } finally {
      button.disabled = false;
    }
  }

  /** The API's messages beside their fields; the rest (and 409s) above the button. */
  showErrors(error) {
    const fields = error instanceof ApiError ? error.fields : {};
    const general = [];
    let first = null;
    for (const [name, messages] of Object.entries(fields)) {
      const text = [].concat(messages).join(" ");
      const input = NON_FIELD.includes(name) ? null : this.form.elements[name];
      const slot = input && this.form.querySelector(`[data-error-for="${name}"]`);
      if (!slot) {
        general.push(text);
        continue;
      }
      slot.textContent = text;
      input.setAttribute("aria-invalid", "true");
      first ??= input;
    }
    if (Object.keys(fields).length === 0) general.push(error.message);
    this._say(general.join(" ") || "Check the fields marked above.", "error");
    first?.focus();
  }

  clearErrors() {
    for (const slot of this.form.querySelectorAll("[data-error-for]")) slot.textContent = "";
    for (const input of this.form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
    this._say("", "");
  }

  reset() {
    this.form.reset();
    this.clearErrors();
    this._showPriceFields();
  }

  _showPriceFields() {
    const type = this.typeField.value;
    this.form.querySelector("[data-field-for=price]").hidden = !PRICED_TYPES.has(type);
    this.form.querySelector("[data-field-for=stopPrice]").hidden = !STOP_TYPES.has(type);
  }

  _say(text, kind) {
    this.status.textContent = text;
    this.status.dataset.kind = kind;
  }
}

/**
 * A Cancel button for an open order; a refusal (the order filled meanwhile: 409) is shown on the
 * button's row and in the activity log, and the row's status follows from the stream.
 * @param {HTMLElement} cell
 * @param {object} order
 * @param {{api: Function, log: Function}} options
 */
export function renderCancel(cell, order, { api, log }) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "button button-quiet button-small";
  button.textContent = "Cancel";
  button.setAttribute("aria-label", `Cancel order ${order.id}`);
  button.addEventListener("click", async () => {
    button.disabled = true;
    button.textContent = "Cancelling…";
    try {
      await api(`/api/orders/${order.id}/cancel/`, { method: "POST" });
      log(`Cancelled order #${order.id}`, "ok");
    } catch (error) {
      button.disabled = false;
      button.textContent = "Cancel";
      button.title = error.message;
      log(`Could not cancel order #${order.id}: ${error.message}`, "error");
    }
  });
  cell.append(button);
}
