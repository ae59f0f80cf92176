/**
 * Typed errors with a stable, searchable code (design.md conventions). Messages never
 * carry key material or passwords.
 */
export class GatehouseError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
    this.name = 'GatehouseError';
  }
}

/** A configuration or rule file problem, located at file:line:column and key path. */
export class ConfigError extends GatehouseError {
  constructor(
    readonly file: string,
    readonly line: number,
    readonly column: number,
    readonly key: string,
    readonly problem: string,
  ) {
    super('E_CONFIG', `${file}:${line}:${column}: ${key ? `${key}: ` : ''}${problem}`, {
      file,
      line,
      column,
      key,
    });
    this.name = 'ConfigError';
  }
}
