-- The "dlsp" config for `vim.lsp.enable("dlsp")` (Neovim 0.11+). Without `require("dlsp").setup()`
-- it uses the defaults (cmd `python3 -m lsp_server`); override fields with
-- `vim.lsp.config("dlsp", { ... })` or use setup().
return require("dlsp").lsp_config()
