// ESLint for the project's own JavaScript (python3 dev.py check runs it): the realtime client and
// the dashboard, as browser ES modules. Vendored code (msgpack, uPlot, axe-core) is linted by its
// own authors, not here.
const js = require("@eslint/js");
const globals = require("globals");

module.exports = [
  {
    ignores: ["**/vendor/**", "node_modules/**", ".venv/**", "var/**", "bench/results/**"],
  },
  js.configs.recommended,
  {
    files: ["realtime/static/**/*.js", "tradingrt/static/**/*.js"],
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: "module",
      globals: { ...globals.browser },
    },
    linterOptions: { reportUnusedDisableDirectives: "error" },
    rules: {
      // Bugs, not taste: a name never used is dead or misspelt code; == coerces types.
      "no-unused-vars": ["error", { args: "after-used", caughtErrors: "all" }],
      "no-undef": "error",
      eqeqeq: ["error", "always"],
      "no-shadow": "error",
      "no-use-before-define": ["error", { functions: false, classes: true, variables: true }],
      "no-implicit-globals": "error",
      "no-self-compare": "error",
      "no-template-curly-in-string": "error",
      "no-unmodified-loop-condition": "error",
      "no-unreachable-loop": "error",
      "no-constructor-return": "error",
      "no-promise-executor-return": "error",
      "array-callback-return": "error",
      "no-await-in-loop": "off", // the client awaits pages and retries in order on purpose
      "require-atomic-updates": "off", // noisy on single-threaded UI state; no race it finds here
    },
  },
  {
    files: ["eslint.config.js"],
    languageOptions: { sourceType: "commonjs", globals: { ...globals.node } },
  },
];
