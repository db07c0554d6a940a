#!/bin/bash
echo hello from the README
