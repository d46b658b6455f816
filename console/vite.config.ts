// Two pages, built to `dist/` and embedded in the control plane:
// `index.html` (the console, served under /console/) and `graphiql.html`
// (GraphiQL, served at /graphiql in debug mode). Everything is bundled: the
// pages load nothing from another origin.
import { defineConfig } from 'vite';

export default defineConfig({
  base: '/console/',
  oxc: {
    // Preact's JSX runtime for the console; the GraphiQL page has no JSX.
    jsx: { runtime: 'automatic', importSource: 'preact' },
  },
  // `npm run dev` serves the sources with hot reload and passes the API
  // through to a running control plane (HTTVPS_URL, default `httvps up`'s).
  server: {
    proxy: {
      '/graphql': { target: process.env.HTTVPS_URL ?? 'http://127.0.0.1:8080', ws: true },
      '/api': { target: process.env.HTTVPS_URL ?? 'http://127.0.0.1:8080' },
    },
  },
  build: {
    // The drift check builds elsewhere and compares with the committed dist/.
    outDir: process.env.CONSOLE_OUT_DIR ?? 'dist',
    emptyOutDir: true,
    target: 'es2022',
    // The console stays one small script; GraphiQL is its own bundle.
    modulePreload: { polyfill: false },
    cssCodeSplit: true,
    sourcemap: false,
    reportCompressedSize: false,
    manifest: true,
    assetsInlineLimit: 0,
    chunkSizeWarningLimit: 2000,
    rolldownOptions: {
      input: { console: 'index.html', graphiql: 'graphiql.html' },
      // GraphiQL's React packages carry "use client" directives, which mean
      // nothing in a client-only bundle.
      onwarn(warning, warn) {
        if (warning.code === 'MODULE_LEVEL_DIRECTIVE') return;
        warn(warning);
      },
    },
  },
});
