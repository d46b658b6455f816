import { render } from 'preact';

import { App } from './app';
import { restore } from './api/session';
import './styles.css';

void restore();
render(<App />, document.getElementById('app')!);
