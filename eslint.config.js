// One flat config for every workspace: typescript-eslint's recommended rules plus the
// project's boundaries (an app never imports another app; only the listener imports smtp-server).
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['**/dist/**', '**/node_modules/**', '**/.turbo/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            { group: ['@moat/screen', '@moat/greylist', '@moat/filter', '@moat/quarantine', '@moat/delivery'], message: 'Apps talk over SMTP, never by import.' },
            { group: ['@moat/*/src/*', '@moat/*/dist/*'], message: 'Import a package through its exports.' },
          ],
        },
      ],
    },
  },
  {
    files: ['**/*.ts'],
    ignores: ['packages/smtp-listener/**'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: [{ name: 'smtp-server', message: 'Only @moat/smtp-listener imports smtp-server.' }],
          patterns: [
            { group: ['@moat/screen', '@moat/greylist', '@moat/filter', '@moat/quarantine', '@moat/delivery'], message: 'Apps talk over SMTP, never by import.' },
            { group: ['smtp-server/*'], message: 'Only @moat/smtp-listener imports smtp-server.' },
          ],
        },
      ],
    },
  },
);
